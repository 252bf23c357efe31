"""The device image path (``PretrainDataModule(images_on_device=True)``): JPEG decode and image augmentation on
the training device, with every random draw made in the data workers.

Why: on the CPU path a worker spends most of an image's time decoding the JPEG and resizing, flipping and
colour-jittering it (``bench/data.py``, ``docs/scaling.md``). Here a worker does only what must stay there:

- it reads and checks the sample, decodes the **label map** (the masker needs it) and transforms it with the
  crop box and flip drawn from the sample's generator (:meth:`JointTransform.draw`, the very draws of the CPU
  path), computes the masks from it, and
- ships the image as its **JPEG bytes** plus those draws (:data:`PLAN_KEYS`).

On the device, :func:`decode_jpegs` decodes the batch (nvJPEG, batched, when the device is CUDA; libjpeg-turbo on
the CPU, the same code the tests run) and :func:`augment_on_device` applies crop + resize, flip, colour jitter and
the mean/std normalisation to the whole batch. Masks and label maps stay aligned with the pixels because the
device applies the worker's box and flip. The pixels match the CPU path's to within a few grey levels
(bilinear weights in float rather than OpenCV's fixed point; ``tests/data/test_device_images.py``).

Batch entries on this path (before :func:`images_from_plan`): ``jpeg`` uint8 [total bytes] (the batch's JPEGs
end to end, one tensor so the DataLoader shares it rather than pickling it), ``jpeg_offsets`` int64 [B+1],
``crop_box`` int64 [B,4] (top, left, height, width in source pixels), ``flip`` bool [B], ``jitter`` float32 [B,4]
(brightness, contrast and saturation factors, 1 meaning unchanged, and the hue shift). After it, ``image`` is
float32 [B,3,S,S], as :func:`~pacofr.data.transforms.normalize_images` gives on the CPU path.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torchvision.ops import roi_align
from torchvision.transforms.v2 import functional as F

from pacofr.data.transforms import (
    _GRAY_WEIGHTS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PLAIN_BILINEAR_MAX_SHRINK,
    normalize_images,
)

PLAN_KEYS = ("jpeg", "jpeg_offsets", "crop_box", "flip", "jitter")
# per-sample entries a replaced (undecodable) image takes from its donor, so pixels, labels and masks agree
PER_SAMPLE_KEYS = ("seg", "mask", "covered", "covered_patches", "region_hist", "crop_box", "flip", "jitter")


def pack_jpegs(blobs: Sequence[bytes]) -> tuple[torch.Tensor, torch.Tensor]:
    """JPEG byte strings -> (one uint8 tensor of them end to end, int64 offsets [len + 1])."""
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in blobs], out=offsets[1:])
    return torch.from_numpy(np.frombuffer(b"".join(blobs), dtype=np.uint8).copy()), torch.from_numpy(offsets)


def unpack_jpegs(data: torch.Tensor, offsets: torch.Tensor) -> list[torch.Tensor]:
    """The inverse of :func:`pack_jpegs`: one 1-D uint8 CPU view per image."""
    bounds = offsets.tolist()
    return [data[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _decode(blobs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    # torchvision's decoders are deprecated since 0.29 in favour of torchcodec.decoders.decode_jpeg (same
    # arguments); torchvision's is the one every supported install has, so it stays until it is removed.
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        out = decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device)
    return out if isinstance(out, list) else [out]


def decode_jpegs(blobs: list[torch.Tensor], device: torch.device | str) -> tuple[list[torch.Tensor | None], int]:
    """Decode a batch of JPEGs (CPU byte tensors) to uint8 [3,H,W] tensors on ``device``.

    One batched call (what nvJPEG wants); if it fails (a corrupt body: the batched decoder returns nothing
    then), each image is decoded alone and the ones that fail come back as None. Returns (images, failures).
    """
    device = torch.device(device)
    try:
        return list(_decode(blobs, device)), 0
    except RuntimeError:
        images: list[torch.Tensor | None] = []
        for blob in blobs:
            try:
                images.append(_decode([blob], device)[0])
            except RuntimeError:
                images.append(None)
        return images, sum(image is None for image in images)


def replace_failed(batch: dict[str, Any], images: list[torch.Tensor | None]) -> list[torch.Tensor]:
    """Fill each undecoded image with a copy of a good sample of the batch, whole (pixels, labels, masks and
    draws), and mark it invalid if the batch has ``valid``; the batch size and the stream position stay."""
    good = [i for i, image in enumerate(images) if image is not None]
    if not good:
        raise RuntimeError(f"no image of the batch could be decoded on the device (keys {batch.get('key')})")
    out: list[torch.Tensor] = []
    for i, image in enumerate(images):
        if image is not None:
            out.append(image)
            continue
        donor = good[i % len(good)]
        out.append(images[donor])  # type: ignore[arg-type]
        for key in PER_SAMPLE_KEYS:
            value = batch.get(key)
            if isinstance(value, torch.Tensor):
                value[i] = value[donor]
        if isinstance(batch.get("key"), list):
            batch["key"][i] = batch["key"][donor]
        if isinstance(batch.get("valid"), torch.Tensor):
            batch["valid"][i] = False
    return out


def _resize_crops(image: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """float [N,3,H,W] and boxes [N,4] (top, left, h, w) -> [N,3,S,S]: bilinear at pixel centres (roi_align with
    ``aligned=True`` samples output pixel j at ``left + (j + 0.5) * w / S - 0.5``, OpenCV's and torchvision's
    convention), one sample per output pixel where the crop is enlarged or shrunk by at most
    :data:`PLAIN_BILINEAR_MAX_SHRINK` (as the CPU path's plain bilinear), ``ceil(shrink)`` samples per axis
    averaged (a box filter against aliasing) where it is shrunk more.

    Border: at the crop's outer row and column roi_align blends in the source pixels just outside the crop, where
    the CPU path (crop, then resize: torchvision's convention) repeats the crop's edge; on a strong edge there
    those pixels differ by up to ~20 grey levels (the interior by 0.1-0.2 on average)."""
    # rois and the plain / shrunk split from the boxes on the host (the workers' draws arrive there): no device sync
    top, left, h, w = boxes.cpu().to(torch.float32).unbind(1)
    rois = torch.stack([torch.arange(len(h), dtype=torch.float32), left, top, left + w, top + h], dim=1)
    plain = torch.maximum(h, w) / size <= PLAIN_BILINEAR_MAX_SHRINK
    rois = rois.to(image.device, image.dtype)
    out = image.new_empty(len(rois), image.shape[1], size, size)
    for chosen, ratio in ((plain, 1), (~plain, 0)):  # 0: roi_align's adaptive ceil(roi / S) samples
        if chosen.any():
            picked = chosen.nonzero().flatten().to(image.device)
            out[picked] = roi_align(image, rois[picked], size, spatial_scale=1.0, sampling_ratio=ratio, aligned=True)
    return out


@lru_cache(maxsize=16)
def _grey_weights(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """torchvision's grey weights as a (1, 3, 1, 1) tensor on ``device``, built once (as ``transforms._mean_std``)."""
    return torch.tensor(_GRAY_WEIGHTS, dtype=dtype, device=device).view(1, 3, 1, 1)


def _jitter(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """torchvision's brightness, contrast, saturation on 0..255 floats, each followed by uint8's clamp and
    truncation as on the CPU path; a factor of 1 leaves an image unchanged (exactly), so one batched pass
    serves every sample. ``factors`` [N,4]: brightness, contrast, saturation, hue (its rows are read on the host to
    find the hue shifts: pass the workers' host tensor)."""
    weights = _grey_weights(x.device, x.dtype)

    def truncate(v: torch.Tensor) -> torch.Tensor:
        return v.clamp_(0, 255).floor_()

    hue = factors[:, 3].cpu()
    b, c, s = (factors[:, i].to(x.device, x.dtype).view(-1, 1, 1, 1) for i in range(3))
    x = truncate(x * b)
    grey = ((x * weights).sum(1, keepdim=True)).floor_()
    x = truncate(c * x + (1 - c) * grey.mean((2, 3), keepdim=True))
    grey = ((x * weights).sum(1, keepdim=True)).floor_()
    x = truncate(s * x + (1 - s) * grey)
    for i in torch.nonzero(hue).flatten().tolist():  # off by default (hue = 0) and costly anyway
        x[i] = F.adjust_hue(x[i] / 255.0, float(hue[i])).mul_(255.0).floor_()
    return x


def augment_on_device(
    images: torch.Tensor | list[torch.Tensor],
    crop_box: torch.Tensor,
    flip: torch.Tensor,
    jitter: torch.Tensor,
    size: int,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> torch.Tensor:
    """uint8 images ([B,3,H,W] or a list of [3,H,W] of any sizes) + the workers' draws -> normalised float32
    [B,3,S,S] on the images' device: crop + resize, flip, colour jitter, mean/std."""
    if isinstance(images, torch.Tensor):
        images = list(images)
    device = images[0].device
    out = torch.empty(len(images), 3, size, size, device=device)
    shapes: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        shapes.setdefault(tuple(image.shape), []).append(i)
    for members in shapes.values():  # one roi_align per source size (one in practice: prep writes one size)
        stacked = torch.stack([images[i] for i in members]).to(torch.float32)
        out[members] = _resize_crops(stacked, crop_box[members], size)
    out = out.round_()  # the CPU path's resize returns uint8 (rounded)
    out = torch.where(flip.to(device).view(-1, 1, 1, 1), out.flip(-1), out)
    out = _jitter(out, jitter)
    return normalize_images(out.to(torch.uint8), mean, std)


def images_from_plan(
    batch: dict[str, Any],
    size: int,
    device: torch.device | str,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> int:
    """Replace the plan entries of a device-path batch by ``image`` (float32 [B,3,S,S] on ``device``), in place;
    entries already on ``device`` stay there. Returns the number of images that failed to decode (replaced)."""
    blobs = unpack_jpegs(batch.pop("jpeg").cpu(), batch.pop("jpeg_offsets").cpu())
    decoded, failures = decode_jpegs(blobs, device)
    images = replace_failed(batch, decoded) if failures else decoded  # type: ignore[assignment]
    batch["image"] = augment_on_device(
        images, batch.pop("crop_box"), batch.pop("flip"), batch.pop("jitter"), size, mean, std
    )
    return failures
