"""iBUG 300-W (68 landmarks, ``.pts`` files): train / common / challenging / full test splits."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .base import DatasetLayoutError, Sample, check_split, landmark_box, load_rgb, require_dir

# The usual split (HRNet, FaRL): train = LFPW-train + HELEN-train + AFW (3148 faces);
# common test = LFPW-test + HELEN-test (554); challenging = iBUG (135); full = both (689).
SPLIT_FOLDERS: dict[str, tuple[str, ...]] = {
    "train": ("lfpw/trainset", "helen/trainset", "afw"),
    "common": ("lfpw/testset", "helen/testset"),
    "challenging": ("ibug",),
    "full": ("lfpw/testset", "helen/testset", "ibug"),
}
IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".JPG", ".PNG")
OUTER_EYE_CORNERS = (36, 45)  # inter-ocular normalisation of the 68-point markup


class IBUG300W:
    """``<root>/{afw,helen/{trainset,testset},lfpw/{trainset,testset},ibug}/<name>.{jpg,png}`` with a
    ``<name>.pts`` next to each image. The face box is the landmarks' tight box."""

    splits = tuple(SPLIT_FOLDERS)
    num_points = 68

    def __init__(self, root: str | os.PathLike[str], split: str = "train"):
        check_split(split, self.splits, "300W")
        self.items: list[tuple[Path, Path]] = []
        for folder in SPLIT_FOLDERS[split]:
            base = require_dir(Path(root) / folder, f"300W folder {folder}")
            for pts in sorted(base.glob("*.pts")):
                image = next((pts.with_suffix(s) for s in IMAGE_SUFFIXES if pts.with_suffix(s).is_file()), None)
                if image is None:
                    raise DatasetLayoutError(f"300W: no image next to {pts}")
                self.items.append((image, pts))
        if not self.items:
            raise DatasetLayoutError(f"300W: no .pts files for split {split!r} under {root}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        image, pts = self.items[index]
        landmarks = read_pts(pts)
        return {"image": load_rgb(image), "landmarks": landmarks, "box": landmark_box(landmarks)}


def read_pts(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse an iBUG ``.pts`` file (``version: 1`` / ``n_points: N`` / ``{`` N ``x y`` lines ``}``).

    The files use 1-based (Matlab) pixel coordinates; the result is 0-based.
    """
    lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    try:
        header = dict(ln.split(":", 1) for ln in lines[: lines.index("{")])
        n_points = int(header["n_points"])
        body = lines[lines.index("{") + 1 : lines.index("}")]
    except (ValueError, KeyError) as err:
        raise ValueError(f"{path}: not an iBUG .pts file ({err})") from err
    points = np.asarray([ln.split() for ln in body], dtype=np.float32)
    if points.shape != (n_points, 2):
        raise ValueError(f"{path}: header says {n_points} points, found {points.shape}")
    return points - 1.0
