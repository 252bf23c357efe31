"""Joint augmentation of a face crop and its parsing map (and its 5 landmarks, if given).

Geometry (random resized crop, horizontal flip) is applied to the image and the label map
together so they stay pixel-aligned; labels are resampled with nearest-exact (same pixel-centre
convention as the image's bilinear resize) and a flip swaps the left/right label ids with
``format.flip_label_lut()``. Colour jitter touches the image only. Every random draw comes from
the ``torch.Generator`` passed in, so the result is a pure function of (inputs, generator state).

Speed: the data workers run :meth:`JointTransform.apply` on uint8 HWC arrays with OpenCV (one
resize per map, saturating uint8 colour ops) and hand uint8 to the collate step; the float
conversion and mean/std normalisation (:func:`normalize_images`) run on the training device, in
``PretrainDataModule.on_after_batch_transfer``. Float work on the CPU was most of the pipeline's
cost. ``JointTransform.__call__`` keeps the float contract (apply + normalise) for direct use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import cv2
import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

from pacofr.data.format import LANDMARK5_FLIP_ORDER, flip_label_lut

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# torchvision's grayscale weights (ITU-R 601-2 as in PIL), used by its contrast and saturation ops
_GRAY_WEIGHTS = np.array([0.2989, 0.587, 0.114], dtype=np.float64)
# torchvision converts float results to uint8 by truncation; OpenCV's saturating ops round to nearest.
# Shifting by just under half a level makes OpenCV's rounding a truncation (up to float ties).
_TRUNCATE = -0.5 + 1e-4


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


@lru_cache(maxsize=16)
def _mean_std(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (3, 1, 1) constants on ``device``, built once: a fresh host list -> GPU copy per batch can block."""
    as_tensor = lambda values: torch.tensor(values, dtype=torch.float32, device=device).view(3, 1, 1)  # noqa: E731
    # plain tensors even when first asked for under inference mode (Lightning's validation, its sanity check
    # included): an inference tensor, cached, could not be used by an op autograd records later
    with torch.inference_mode(False):
        return as_tensor(mean), as_tensor(std)


def mean_std_constants(
    mean: tuple[float, ...] | list[float], std: tuple[float, ...] | list[float], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalisation's (3, 1, 1) float32 ``(mean, std)`` on ``device``, built once per (mean, std, device) and
    shared by every caller (``normalize_images``, the monitors' de-normalisation): read-only, never write to them.
    Building them per batch is a blocking host-to-device copy on a GPU."""
    return _mean_std(tuple(mean), tuple(std), device)


def normalize_images(
    images: torch.Tensor,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> torch.Tensor:
    """uint8 ``(..., 3, H, W)`` -> contiguous float32 ``(x / 255 - mean) / std`` on the images' device.

    The one place the network-input normalisation is defined: the datamodule calls it on the
    device after the batch transfer, :meth:`JointTransform.__call__` on the CPU.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize_images takes uint8 images, got {images.dtype}")
    if images.dim() < 3 or images.shape[-3] != 3:
        raise ValueError(f"images must be (..., 3, H, W), got shape {tuple(images.shape)}")
    mean_t, std_t = mean_std_constants(mean, std, images.device)
    out = images.to(torch.float32).div_(255.0).sub_(mean_t).div_(std_t)
    return out.contiguous()


def sample_resized_crop(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], gen: torch.Generator
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box search, drawn from ``gen``: (top, left, h, w)."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        # torch.rand(2) yields the same two numbers as two scalar draws, in one call
        u_area, u_aspect = torch.rand(2, generator=gen).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u_area)
        aspect = math.exp(log_lo + (log_hi - log_lo) * u_aspect)
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


# Shrinking by at most this factor uses plain bilinear: its taps still cover every source pixel,
# so antialiasing changes a few edge pixels by a few levels (mean ~0.3 level at 256 -> 224).
PLAIN_BILINEAR_MAX_SHRINK = 1.25


def resize_crop_image(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """uint8 ``(H, W, 3)`` crop ``box`` -> ``(size, size, 3)``, bilinear (pixel centres), antialiased
    where it shrinks by more than :data:`PLAIN_BILINEAR_MAX_SHRINK`.

    Enlarging or mildly shrinking (all 224 crops of the default 256 px faces): OpenCV's bilinear
    resize, torchvision's convention to within one grey level and ~2x faster than torch's uint8
    kernel. Stronger shrinking (larger sources): torch's antialiased uint8 bilinear kernel, exactly
    what ``F.resized_crop(antialias=True)`` computes, so it does not alias.
    """
    top, left, h, w = box
    crop = image[top : top + h, left : left + w]
    if max(h, w) <= size * PLAIN_BILINEAR_MAX_SHRINK:
        return cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)
    tensor = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).unsqueeze(0)  # channels-last view
    out = torch.nn.functional.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True)
    return np.ascontiguousarray(out[0].permute(1, 2, 0).numpy())


def resize_crop_labels(seg: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """uint8 ``(H, W)`` label map crop ``box`` -> ``(size, size)``, nearest-exact (pixel centres)."""
    top, left, h, w = box
    return cv2.resize(seg[top : top + h, left : left + w], (size, size), interpolation=cv2.INTER_NEAREST_EXACT)


def _scale_shift(image: np.ndarray, scale: float, shift: float) -> np.ndarray:
    """``trunc(clamp(scale * x + shift, 0, 255))`` per pixel, in one saturating uint8 pass."""
    return cv2.addWeighted(image, scale, image, 0.0, shift + _TRUNCATE)


def jitter_colours(
    image: np.ndarray, brightness: float | None, contrast: float | None, saturation: float | None
) -> np.ndarray:
    """torchvision's ``adjust_brightness``, ``adjust_contrast``, ``adjust_saturation`` on uint8 HWC RGB,
    in that order (None skips one), with uint8 results clamped and truncated after each as torchvision does.

    Each op is one saturating OpenCV pass. The contrast mean is torchvision's mean grey level
    ``mean(floor(0.2989 r + 0.587 g + 0.114 b))`` taken as the weighted channel means minus the
    floor's average half level; saturation blends each pixel with its exact (not floored) grey.
    Both differ from torchvision by at most one or two grey levels (``tests/data``).
    """
    out = image
    if brightness is not None:
        out = _scale_shift(out, brightness, 0.0)
    if contrast is not None:
        channel_means = np.asarray(cv2.mean(out)[:3])
        grey_mean = float(channel_means @ _GRAY_WEIGHTS) - 0.5
        out = _scale_shift(out, contrast, (1.0 - contrast) * max(grey_mean, 0.0))
    if saturation is not None:
        # s * x + (1 - s) * grey(x) for every channel: one 3x4 colour matrix (the grey's floor as -0.5 on average)
        matrix = np.zeros((3, 4), dtype=np.float32)
        matrix[:, :3] = saturation * np.eye(3) + (1.0 - saturation) * _GRAY_WEIGHTS[None, :]
        matrix[:, 3] = -(1.0 - saturation) * 0.5 + _TRUNCATE
        out = cv2.transform(out, matrix)
    return out


def _flip_lut_256() -> np.ndarray:
    """``flip_label_lut()`` as a 256-entry uint8 table (ids beyond the labels map to themselves)."""
    lut = np.arange(256, dtype=np.uint8)
    flip = flip_label_lut()
    lut[: len(flip)] = flip
    return lut


class JointTransform:
    """Joint augmentation; :meth:`apply` (uint8 HWC arrays, used by the data workers) or ``__call__``.

    ``__call__(image uint8 [3,H,W], seg [H,W], gen, meta) -> (image float32 [3,S,S], seg int64 [S,S], meta)``,
    normalised with ``config.mean/std`` (the same numbers :func:`normalize_images` gives on the device).

    ``train=True``: random resized crop + flip (joint), colour jitter (image).
    ``train=False``: resize to ``size / eval_crop_fraction`` and centre crop ``size`` (joint).
    If ``meta`` holds ``landmarks5`` they are mapped the same way (a new dict is returned).
    """

    def __init__(self, size: int = 224, train: bool = True, config: AugmentConfig | None = None):
        self.size = size
        self.train = train
        self.config = config or AugmentConfig()
        self._flip_lut = _flip_lut_256()

    def _sample(
        self, height: int, width: int, gen: torch.Generator
    ) -> tuple[tuple[int, int, int, int], bool, list[float] | None]:
        """Everything random, drawn up front: crop box, flip, and (training) the colour jitter's uniforms."""
        cfg = self.config
        if self.train:
            box = sample_resized_crop(height, width, cfg.crop_scale, cfg.crop_ratio, gen)
            # flip, then jitter's apply/brightness/contrast/saturation/hue: the same numbers as six scalar
            # draws in that order, in one call (nothing draws from the generator after them)
            flip_u, *colour = torch.rand(6, generator=gen).tolist()
            return box, flip_u < cfg.hflip_prob, colour
        # Eval: the centre crop of a (size / fraction) resize is the centre box of side
        # fraction * min(H, W) in source pixels, resized to `size` in one step.
        side = min(height, width) * cfg.eval_crop_fraction
        h = w = max(1, round(side))
        return ((height - h) // 2, (width - w) // 2, h, w), False, None

    def colour_factors(self, uniforms: list[float] | None) -> tuple[float, float, float, float]:
        """The jitter's (brightness, contrast, saturation, hue) from its five uniforms; (1, 1, 1, 0) where it
        changes nothing (not applied, a zero setting, or eval)."""
        cfg = self.config
        if uniforms is None:
            return 1.0, 1.0, 1.0, 0.0
        apply_u, u_b, u_c, u_s, u_h = uniforms
        if apply_u >= cfg.jitter_prob:
            return 1.0, 1.0, 1.0, 0.0
        # All factors are drawn (fixed number of draws) so one setting does not shift another's.
        draw = lambda x, u: max(0.0, 1 - x) + (1 + x - max(0.0, 1 - x)) * u if x > 0 else 1.0  # noqa: E731
        hue = -cfg.hue + 2 * cfg.hue * u_h
        return draw(cfg.brightness, u_b), draw(cfg.contrast, u_c), draw(cfg.saturation, u_s), hue

    def _jitter(self, image: np.ndarray, uniforms: list[float]) -> np.ndarray:
        cfg = self.config
        if uniforms[0] >= cfg.jitter_prob:
            return image
        b, c, s, hue = self.colour_factors(uniforms)
        image = jitter_colours(
            image,
            b if cfg.brightness > 0 else None,
            c if cfg.contrast > 0 else None,
            s if cfg.saturation > 0 else None,
        )
        if cfg.hue > 0:  # rare and costly anyway: torchvision's op on a CHW view
            shifted = F.adjust_hue(torch.from_numpy(image).permute(2, 0, 1), hue)
            image = np.ascontiguousarray(shifted.permute(1, 2, 0).numpy())
        return image

    def draw(
        self, height: int, width: int, gen: torch.Generator
    ) -> tuple[tuple[int, int, int, int], bool, tuple[float, float, float, float]]:
        """The sample's draws, as :meth:`apply` makes them: (crop box (top, left, h, w), flip, colour factors).
        The device image path (:mod:`pacofr.data.device_images`) ships them with the JPEG bytes."""
        box, flip, colour = self._sample(height, width, gen)
        return box, flip, self.colour_factors(colour)

    def apply_labels(self, seg: np.ndarray, box: tuple[int, int, int, int], flip: bool) -> np.ndarray:
        """The label map's half of :meth:`apply` for drawn ``box`` and ``flip``: uint8 (H, W) -> (S, S)."""
        out = resize_crop_labels(seg, box, self.size)
        return cv2.LUT(cv2.flip(out, 1), self._flip_lut) if flip else out

    def apply(
        self,
        image: np.ndarray,
        seg: np.ndarray,
        gen: torch.Generator,
        meta: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any] | None]:
        """``(image uint8 (H,W,3) RGB, seg uint8 (H,W), gen, meta) -> (uint8 (S,S,3), uint8 (S,S), meta)``."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
        if seg.dtype != np.uint8:
            raise ValueError(f"seg must be uint8 (H, W), got {seg.dtype}")
        if seg.shape != image.shape[:2]:
            raise ValueError(f"seg {seg.shape} does not match image {image.shape[:2]}")
        height, width = seg.shape
        box, flip, colour = self._sample(height, width, gen)
        image = resize_crop_image(image, box, self.size)
        seg_out = self.apply_labels(seg, box, flip)
        if flip:
            image = cv2.flip(image, 1)
        if colour is not None:
            image = self._jitter(image, colour)
        if meta is not None and meta.get("landmarks5") is not None:
            meta = dict(meta, landmarks5=_map_landmarks(meta["landmarks5"], box, self.size, flip))
        return image, seg_out, meta

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
        hwc = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
        out_image, out_seg, meta = self.apply(hwc, seg.to(torch.uint8).numpy(), gen, meta)
        chw = torch.from_numpy(out_image).permute(2, 0, 1)
        normalised = normalize_images(chw, self.config.mean, self.config.std)
        return normalised, torch.from_numpy(out_seg).to(torch.int64), meta
