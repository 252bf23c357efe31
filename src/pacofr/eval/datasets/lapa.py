"""LaPa face parsing (11 classes, 106 landmarks): ``<root>/{train,val,test}/{images,labels,landmarks}/``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .base import (
    SIDE_CHECK_MAPS,
    DatasetLayoutError,
    Sample,
    check_split,
    load_gray,
    load_rgb,
    names_sides_from_viewer,
    require_dir,
    swap_ids,
)

LAPA_LABELS: tuple[str, ...] = (
    "background",
    "skin",
    "l_brow",
    "r_brow",
    "l_eye",
    "r_eye",
    "nose",
    "u_lip",
    "i_mouth",
    "l_lip",
    "hair",
)


LAPA_SIDE_PAIRS = ((2, 3), (4, 5))  # (l_brow, r_brow), (l_eye, r_eye)


class LaPa:
    """``images/<name>.jpg``, ``labels/<name>.png`` (uint8 ids 0-10), ``landmarks/<name>.txt``
    (first number 106, then 106 ``x y`` pairs).

    Sides follow pacofr's convention, the subject's (``l_eye`` = the person's left eye, on the image's right):
    the reader looks at the first label maps and, if LaPa's "left" classes lie on the image's left (named from
    the viewer), swaps the brow and eye pairs (``swapped_sides``)."""

    splits = ("train", "val", "test")
    label_names = LAPA_LABELS

    def __init__(self, root: str | os.PathLike[str], split: str = "train"):
        check_split(split, self.splits, "LaPa")
        base = require_dir(Path(root) / split, f"LaPa {split} folder")
        images = require_dir(base / "images", "LaPa images folder")
        self.items: list[tuple[Path, Path, Path]] = []
        for image in sorted(images.glob("*.jpg")):
            label = base / "labels" / f"{image.stem}.png"
            marks = base / "landmarks" / f"{image.stem}.txt"
            for path, what in ((label, "label map"), (marks, "landmark file")):
                if not path.is_file():
                    raise DatasetLayoutError(f"LaPa: {what} {path} missing for {image.name}")
            self.items.append((image, label, marks))
        if not self.items:
            raise DatasetLayoutError(f"LaPa: no .jpg images in {images}")
        maps = (load_gray(label) for _, label, _ in self.items[:SIDE_CHECK_MAPS])
        self.swapped_sides = names_sides_from_viewer(maps, 4, 5)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        image, label, marks = self.items[index]
        seg = load_gray(label)
        if self.swapped_sides:
            seg = swap_ids(seg, LAPA_SIDE_PAIRS)
        return {"image": load_rgb(image), "seg": seg, "landmarks": read_lapa_landmarks(marks)}


def read_lapa_landmarks(path: Path) -> np.ndarray:
    values = path.read_text().split()
    if not values or int(float(values[0])) != 106 or len(values) != 1 + 2 * 106:
        raise ValueError(f"{path}: expected '106' followed by 106 'x y' lines")
    return np.asarray(values[1:], dtype=np.float32).reshape(106, 2)
