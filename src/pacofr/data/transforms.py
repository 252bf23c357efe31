"""Joint augmentation of a face crop and its parsing map (and its 5 landmarks, if given).

Geometry (random resized crop, horizontal flip) is applied to the image and the label map
together so they stay pixel-aligned; labels are resampled with nearest-exact (same pixel-centre
convention as the image's bilinear resize) and a flip swaps the left/right label ids with
``format.flip_label_lut()``. Colour jitter touches the image only. Every random draw comes from
the ``torch.Generator`` passed in, so the result is a pure function of (inputs, generator state).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from pacofr.data.format import LANDMARK5_FLIP_ORDER, flip_label_lut

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass
class AugmentConfig:
    """Training augmentation (defaults *ours*: aligned faces tolerate only mild crops)."""

    crop_scale: tuple[float, float] = (0.5, 1.0)  # fraction of the source area kept by the random crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio range of the random crop
    hflip_prob: float = 0.5
    jitter_prob: float = 0.8  # probability of applying colour jitter at all
    brightness: float = 0.4  # factors drawn from [1 - x, 1 + x]
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.0  # shift drawn from [-x, x] (x <= 0.5); 0 skips the (slow) hue op
    eval_crop_fraction: float = 224 / 256  # eval: resize to size / fraction, then centre crop `size`
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < lo <= hi, got {self.crop_ratio}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")
        if not 0 < self.eval_crop_fraction <= 1:
            raise ValueError(f"eval_crop_fraction must be in (0, 1], got {self.eval_crop_fraction}")


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=gen).item()


def sample_resized_crop(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], gen: torch.Generator
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box search, drawn from ``gen``: (top, left, h, w)."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * _uniform(gen, *scale)
        aspect = math.exp(_uniform(gen, log_lo, log_hi))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=gen))
            left = int(torch.randint(0, width - w + 1, (), generator=gen))
            return top, left, h, w
    # Fallback: the largest centre crop within the ratio range (as torchvision does).
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _map_landmarks(
    points: list[list[float]], box: tuple[int, int, int, int], out_size: int, flip: bool
) -> list[list[float]]:
    """Crop box + resize (pixel-centre convention) + optional flip, as applied to the pixels."""
    top, left, h, w = box
    sx, sy = out_size / w, out_size / h
    mapped = [[(x + 0.5 - left) * sx - 0.5, (y + 0.5 - top) * sy - 0.5] for x, y in points]
    if flip:
        mapped = [[out_size - 1 - x, y] for x, y in mapped]
        if len(mapped) == len(LANDMARK5_FLIP_ORDER):
            mapped = [mapped[i] for i in LANDMARK5_FLIP_ORDER]
    return mapped


class JointTransform:
    """``(image uint8 [3,H,W], seg uint8/int64 [H,W], gen, meta) -> (image float32 [3,S,S], seg int64 [S,S], meta)``.

    ``train=True``: random resized crop + flip (joint), colour jitter (image), normalise.
    ``train=False``: resize to ``size / eval_crop_fraction`` and centre crop ``size`` (joint), normalise.
    If ``meta`` holds ``landmarks5`` they are mapped the same way (a new dict is returned).
    """

    def __init__(self, size: int = 224, train: bool = True, config: AugmentConfig | None = None):
        self.size = size
        self.train = train
        self.config = config or AugmentConfig()
        self._flip_lut = torch.tensor(flip_label_lut(), dtype=torch.int64)
        self._mean = torch.tensor(self.config.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(self.config.std, dtype=torch.float32).view(3, 1, 1)

    def _geometry(self, height: int, width: int, gen: torch.Generator) -> tuple[tuple[int, int, int, int], bool]:
        cfg = self.config
        if self.train:
            box = sample_resized_crop(height, width, cfg.crop_scale, cfg.crop_ratio, gen)
            flip = bool(torch.rand((), generator=gen).item() < cfg.hflip_prob)
            return box, flip
        # Eval: the centre crop of a (size / fraction) resize is the centre box of side
        # fraction * min(H, W) in source pixels, resized to `size` in one step.
        side = min(height, width) * cfg.eval_crop_fraction
        h = w = max(1, round(side))
        return ((height - h) // 2, (width - w) // 2, h, w), False

    def _jitter(self, image: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        cfg = self.config
        if torch.rand((), generator=gen).item() >= cfg.jitter_prob:
            return image
        # Always draw all factors (fixed number of draws) so one setting does not shift another's.
        b = _uniform(gen, max(0.0, 1 - cfg.brightness), 1 + cfg.brightness)
        c = _uniform(gen, max(0.0, 1 - cfg.contrast), 1 + cfg.contrast)
        s = _uniform(gen, max(0.0, 1 - cfg.saturation), 1 + cfg.saturation)
        hue = _uniform(gen, -cfg.hue, cfg.hue)
        if cfg.brightness > 0:
            image = F.adjust_brightness(image, b)
        if cfg.contrast > 0:
            image = F.adjust_contrast(image, c)
        if cfg.saturation > 0:
            image = F.adjust_saturation(image, s)
        if cfg.hue > 0:
            image = F.adjust_hue(image, hue)
        return image

    def __call__(
        self,
        image: torch.Tensor,
        seg: torch.Tensor,
        gen: torch.Generator,
        meta: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any] | None]:
        if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
            raise ValueError(f"image must be uint8 [3,H,W], got {image.dtype} {tuple(image.shape)}")
        if seg.shape != image.shape[1:]:
            raise ValueError(f"seg {tuple(seg.shape)} does not match image {tuple(image.shape[1:])}")
        height, width = seg.shape
        box, flip = self._geometry(height, width, gen)
        top, left, h, w = box
        out = [self.size, self.size]
        image = F.resized_crop(image, top, left, h, w, out, InterpolationMode.BILINEAR, antialias=True)
        seg_out = F.resized_crop(seg.to(torch.uint8)[None], top, left, h, w, out, InterpolationMode.NEAREST_EXACT)[0]
        seg_out = seg_out.to(torch.int64)
        if flip:
            image = image.flip(-1)
            seg_out = self._flip_lut[seg_out.flip(-1)]
        if self.train:
            image = self._jitter(image, gen)
        image = (image.to(torch.float32) / 255.0 - self._mean) / self._std
        if meta is not None and meta.get("landmarks5") is not None:
            meta = dict(meta, landmarks5=_map_landmarks(meta["landmarks5"], box, self.size, flip))
        return image.contiguous(), seg_out.contiguous(), meta
