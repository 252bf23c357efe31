"""Pixel decoding of a raw shard sample: the JPEG face crop and its PNG label map as uint8 arrays.

Decoding is the expensive step of the input pipeline and the one that finds a corrupt image body (the
shard reader only checks headers); the batch builder catches what these functions raise and replaces the
sample.
"""

from __future__ import annotations

import cv2
import numpy as np
import simplejpeg
import torch

from pacofr.data.format import KEY_IMAGE, KEY_SEG, NUM_LABELS
from pacofr.data.shard_reader import RawSample


def decode_arrays(raw: RawSample) -> tuple[np.ndarray, np.ndarray]:
    """Full decode: image uint8 (H, W, 3) RGB, label map uint8 (H, W).

    JPEG: ``simplejpeg`` (libjpeg-turbo; with its default accurate DCT and upsampling it gives the
    very pixels of ``torchvision.io.decode_jpeg``, ~12% faster on 256 px faces, and it raises on
    truncated or corrupt data). PNG: OpenCV (libpng), ~10% faster than torchvision's; it returns
    None on bad data, turned into an error here. torchvision's decoders are deprecated since 0.29.
    """
    image = simplejpeg.decode_jpeg(raw[KEY_IMAGE], colorspace="RGB")
    labels = decode_labels(raw)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"label map shape {labels.shape} does not fit image {image.shape}")
    return image, labels


def decode_labels(raw: RawSample) -> np.ndarray:
    """The label map alone, uint8 (H, W) (the device image path decodes the JPEG elsewhere)."""
    labels = cv2.imdecode(np.frombuffer(raw[KEY_SEG], dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if labels is None:
        raise ValueError("label map PNG could not be decoded")
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"label map must be 8-bit single-channel, got {labels.dtype} {labels.shape}")
    return labels


def decode_sample(raw: RawSample) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`decode_arrays` as tensors: image uint8 [3,H,W] (a CHW view of the HWC array), labels uint8 [H,W]."""
    image, labels = decode_arrays(raw)
    return torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(labels)


def check_labels(seg: np.ndarray) -> None:
    """Raise if a decoded label map holds an id beyond the format's labels (the masker would)."""
    if seg.size and int(seg.max()) >= NUM_LABELS:
        raise ValueError(f"label map holds id {int(seg.max())}, but the labels are 0..{NUM_LABELS - 1}")
