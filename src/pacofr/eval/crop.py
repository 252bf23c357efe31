"""Turn a raw benchmark sample into model input: a square crop resized to ``img_size``.

The crop is centred on the face box scaled by ``box_scale`` (or on the whole image when the
task or the sample has no box); outside pixels are black. Landmarks and boxes move with the crop,
and the scale is uniform, so NMEs computed in crop pixels equal those in the original pixels.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from pacofr.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # one source of the normalisation

from .datasets.base import Sample


def square_region(sample: Sample, use_box: bool, box_scale: float) -> tuple[float, float, float]:
    """``(x0, y0, side)`` of the square to crop."""
    h, w = sample["image"].shape[:2]
    if use_box and sample.get("box") is not None:
        x1, y1, x2, y2 = (float(v) for v in sample["box"])
        side = max(x2 - x1, y2 - y1, 1.0) * box_scale
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    else:
        side, cx, cy = float(max(h, w)), w / 2, h / 2
    return cx - side / 2, cy - side / 2, side


def crop_resize(sample: Sample, img_size: int, use_box: bool = True, box_scale: float = 1.25) -> Sample:
    """Crop + resize ``image`` (bilinear), ``image_b`` (whole image), ``seg`` (nearest); move
    ``landmarks`` and ``box``. Other keys pass through."""
    x0, y0, side = square_region(sample, use_box, box_scale)
    scale = img_size / side
    rect = (x0, y0, x0 + side, y0 + side)  # PIL pads outside pixels with zeros
    out = dict(sample)
    out["image"] = _resize(sample["image"], rect, img_size, Image.BILINEAR)
    if "seg" in sample:
        out["seg"] = _resize(sample["seg"], rect, img_size, Image.NEAREST)
    if "image_b" in sample:
        h, w = sample["image_b"].shape[:2]
        s = max(h, w)
        out["image_b"] = _resize(sample["image_b"], ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2), img_size)
    if "landmarks" in sample:
        # Continuous crop coordinates (pixel i spans [i, i + 1)), the frame the heads predict in.
        points = np.asarray(sample["landmarks"], np.float32) + 0.5
        out["landmarks"] = ((points - [x0, y0]) * scale).astype(np.float32)
    if sample.get("box") is not None:
        out["box"] = ((np.asarray(sample["box"], np.float32) - [x0, y0, x0, y0]) * scale).astype(np.float32)
    return out


def _resize(array: np.ndarray, rect: tuple[float, ...], size: int, resample: int = Image.BILINEAR) -> np.ndarray:
    im = Image.fromarray(array)
    # transform(EXTENT) samples the exact (sub-pixel) rectangle; crop() would round it.
    return np.array(im.transform((size, size), Image.EXTENT, rect, resample=resample))


def to_tensor_image(rgb: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 255.0
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
