"""Pixel decoding of a raw shard sample: the JPEG face crop and its PNG label map as uint8 arrays.

Decoding is the expensive step of the input pipeline and the one that finds a corrupt image body (the
shard reader only checks headers); the batch builder catches what these functions raise and replaces the
sample.

The device image path decodes the JPEG on the training device, where a damaged body is not reliably an error
(a truncated one is reported to decode on nvJPEG with a warning); its worker applies :func:`jpeg_problem`, the part of
libjpeg-turbo's strict verdict that can be had without decoding, so that the same damaged file is rejected, and
replaced the same way, on both paths.
"""

from __future__ import annotations

import re

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
    """The device image path's decode in the worker: the label map alone, uint8 (H, W), once the JPEG has passed
    :func:`jpeg_problem`. The worker is where the CPU path decodes the JPEG, so a damaged one fails here, as this
    sample's error, and is replaced within the batch exactly as on the CPU path (the device decodes the rest)."""
    problem = jpeg_problem(raw[KEY_IMAGE])
    if problem is not None:
        raise ValueError(f"damaged JPEG: {problem}")
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


# The end of a scan's entropy-coded data: a run of 0xFF bytes followed by a byte that makes it a marker, i.e. not a
# stuffed zero (0xFF00 is a data byte 0xFF) nor a restart marker (RST0-7 sit inside the scan). libjpeg's Huffman
# decoder reads the same way (fill_bit_buffer: skip 0xFF fill bytes, 0x00 means data, anything else is a marker).
_SCAN_END = re.compile(rb"\xff\xff*[^\x00\xd0-\xd7\xff]")
_NO_LENGTH = frozenset((0x01, *range(0xD0, 0xD8)))  # TEM, RST0-7: markers without a length field


def jpeg_problem(data: bytes) -> str | None:
    """Why libjpeg-turbo in strict mode (the CPU path's :func:`decode_arrays`) must reject this JPEG, as far as its
    marker structure tells, or None. Cost: one regex scan of the entropy-coded data, no Huffman decoding; on a 256
    px face ~1/20 of a full decode of the same file (145 µs vs 3.3 ms, both measured on a loaded 2-core machine).

    The rule: SOI first; every segment complete; every scan's entropy-coded data closed by a marker; an EOI after
    at least one scan (bytes after the EOI are ignored, as libjpeg does). Any truncation of a JPEG breaks it, and
    libjpeg rejects every truncation too ("Premature end of JPEG file"): the two verdicts agree on every cut
    (``tests/data/test_device_jpeg_validity.py`` checks each cut point). It never rejects a file libjpeg accepts;
    damage that keeps the structure (a flipped bit, the middle of a body cut out with its end kept) passes here
    although libjpeg may reject it: finding that needs the Huffman decode itself (~60 % of a full decode's time).
    """
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return "no SOI marker at the start"
    pos, scans = 2, 0
    while True:
        if pos >= n:
            return "truncated: ends before its EOI marker"
        if data[pos] != 0xFF:
            return f"byte {pos} is not a marker"  # libjpeg warns of extraneous bytes (strict: an error)
        while pos < n and data[pos] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos >= n:
            return "truncated: ends before its EOI marker"
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            return None if scans else "EOI marker before any scan"
        if marker in (0x00, 0xD8):
            return f"marker 0x{marker:02X} at byte {pos - 1}"
        if marker in _NO_LENGTH:
            continue
        if pos + 2 > n:
            return "truncated inside a segment header"
        # a segment's length counts its two length bytes; libjpeg skips nothing more when it is under 2
        pos += max((data[pos] << 8) | data[pos + 1], 2)
        if pos > n:
            return f"truncated inside a 0x{marker:02X} segment"
        if marker == 0xDA:  # start of scan: its entropy-coded data runs to the next marker
            scans += 1
            end = _SCAN_END.search(data, pos)
            if end is None:
                return "truncated: entropy-coded data not closed by a marker"
            pos = end.end() - 2  # the last fill byte before the marker code
