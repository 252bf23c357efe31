"""Occlusion-robustness protocol: the same test samples with a synthetic occluder pasted on the face.

The occluder (a flat or striped rectangle or ellipse, random colour) covers ``area`` of the face
box (the whole image when the sample has no box), at a position drawn per sample from
``(seed, index)``: every model sees the same occluded images. Targets are unchanged: the task is
to predict what is under the occluder (the score drop measures robustness).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .base import Sample


def paste_occluder(image: np.ndarray, box: np.ndarray | None, rng: np.random.Generator, area: float) -> np.ndarray:
    """A copy of ``image`` with one occluder covering about ``area`` of ``box`` (x1, y1, x2, y2)."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (0.0, 0.0, float(w), float(h)) if box is None else [float(v) for v in box]
    bw, bh = max(x2 - x1, 2.0), max(y2 - y1, 2.0)
    aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    ow = min(bw, np.sqrt(area * bw * bh * aspect))
    oh = min(bh, area * bw * bh / ow)
    ox = x1 + rng.uniform(0, bw - ow)
    oy = y1 + rng.uniform(0, bh - oh)
    colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    canvas = Image.fromarray(image)
    mask = Image.new("L", canvas.size, 0)
    shape = [ox, oy, ox + ow, oy + oh]
    draw = ImageDraw.Draw(mask)
    if rng.random() < 0.5:
        draw.rectangle(shape, fill=255)
    else:
        draw.ellipse(shape, fill=255)
    fill = np.empty_like(image)
    fill[...] = colour
    if rng.random() < 0.5:  # stripes: a textured occluder, not just a flat patch
        period = max(2, int(min(ow, oh) / 6))
        stripe = (np.arange(w) // period) % 2 == 1
        fill[:, stripe] = 255 - np.asarray(colour, dtype=np.uint8)
    canvas.paste(Image.fromarray(fill), (0, 0), mask)
    return np.asarray(canvas)


class Occluded:
    """Wrap a reader: ``image`` (and ``image_b`` of verification pairs) get an occluder."""

    def __init__(self, dataset: Any, area: float = 0.25, seed: int = 0):
        if not 0.0 < area <= 1.0:
            raise ValueError(f"occluder area must be in (0, 1], got {area}")
        self.dataset, self.area, self.seed = dataset, area, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:
        sample = dict(self.dataset[index])
        rng = np.random.default_rng([self.seed, index])
        box = sample.get("box")
        sample["image"] = paste_occluder(sample["image"], box, rng, self.area)
        if "image_b" in sample:  # verification: occlude the probe side of the pair
            sample["image_b"] = paste_occluder(sample["image_b"], None, rng, self.area)
        return sample
