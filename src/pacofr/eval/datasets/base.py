"""What every benchmark reader returns, and the small file helpers they share.

A reader indexes one public on-disk layout and returns raw samples (numpy, original pixels):

- ``image``: uint8 (H, W, 3) RGB
- ``seg``: uint8 (H, W) label ids (parsing readers; the dataset's own label set)
- ``landmarks``: float32 (K, 2) x, y in pixels (0-based)
- ``box``: float32 (4,) face box ``x1, y1, x2, y2`` in pixels, when the dataset defines one
- ``pose``: float32 (3,) yaw, pitch, roll in degrees
- ``label``: int class id; ``attrs``: int64 (A,) 0/1 attribute flags
- verification pairs: ``image`` and ``image_b``, ``issame`` bool, ``index`` the pair's position

Readers fail on construction with :class:`DatasetLayoutError` naming the missing file and the
expected layout (see docs/datasets.md), never later in a worker.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pacofr.errors import UserError

Sample = dict[str, Any]


class DatasetLayoutError(UserError, FileNotFoundError):
    """The folder does not hold the public layout this reader expects."""


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetLayoutError(f"missing {what}: {path} (see docs/datasets.md for the expected layout)")
    return path


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetLayoutError(f"missing {what}: {path} (see docs/datasets.md for the expected layout)")
    return path


def check_split(split: str, allowed: tuple[str, ...], reader: str) -> None:
    if split not in allowed:
        raise ValueError(f"{reader}: unknown split {split!r}; choose one of {allowed}")


def load_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an image file as RGB uint8. EXIF orientation is ignored on purpose: the benchmarks'
    annotations refer to the stored pixel grid."""
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))  # a writable copy (torch warns on read-only arrays)


def decode_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.array(im.convert("RGB"))


def load_gray(path: str | os.PathLike[str]) -> np.ndarray:
    """Single-channel uint8 (label maps and masks; 3-channel masks are reduced to their first channel)."""
    with Image.open(path) as im:
        if im.mode in ("L", "P", "1", "I;16", "I"):
            return np.asarray(im if im.mode in ("L", "P") else im.convert("L"))
        return np.asarray(im.convert("RGB"))[..., 0]


def landmark_box(landmarks: np.ndarray) -> np.ndarray:
    """Tight ``x1, y1, x2, y2`` box of the given points (ignores NaN / negative = missing points)."""
    pts = landmarks[np.all(np.isfinite(landmarks) & (landmarks >= 0), axis=1)]
    if len(pts) == 0:
        raise ValueError("no valid landmark to build a box from")
    return np.array([*pts.min(0), *pts.max(0)], dtype=np.float32)


def decode_gray(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im if im.mode in ("L", "P") else im.convert("L"))


# pacofr names a two-sided part from the subject's side: ``l_eye`` is the person's left eye, which a frontal face
# shows on the image's right. Datasets name the sides by their own convention; each parsing reader checks it on
# its own label maps and swaps the pair ids when they name the sides from the viewer.
SIDE_CHECK_MAPS = 20  # label maps a reader looks at to decide


def names_sides_from_viewer(maps: Iterable[np.ndarray], left_id: int, right_id: int) -> bool:
    """Whether label ``left_id`` lies on the image's left of ``right_id`` in most maps that hold both (the
    viewer's naming); False when no map holds both (nothing to decide on: the names are taken as written)."""
    votes = 0
    for seg in maps:
        xs_left, xs_right = np.nonzero(seg == left_id)[1], np.nonzero(seg == right_id)[1]
        if xs_left.size and xs_right.size:
            votes += 1 if xs_left.mean() < xs_right.mean() else -1
    return votes > 0


def swap_ids(seg: np.ndarray, pairs: Iterable[tuple[int, int]]) -> np.ndarray:
    """``seg`` with each pair of label ids exchanged."""
    out = seg.copy()
    for a, b in pairs:
        out[seg == a], out[seg == b] = b, a
    return out
