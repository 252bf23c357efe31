"""WFLW (98 landmarks) with its six attribute subsets, from the official annotation text files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .base import DatasetLayoutError, Sample, check_split, load_rgb, require_dir, require_file

ATTRIBUTES: tuple[str, ...] = ("pose", "expression", "illumination", "makeup", "occlusion", "blur")
OUTER_EYE_CORNERS = (60, 72)  # inter-ocular normalisation of the 98-point markup
ANNOTATION_DIR = "WFLW_annotations/list_98pt_rect_attr_train_test"
FIELDS = 98 * 2 + 4 + len(ATTRIBUTES) + 1  # coords, box, attribute flags, image path


class WFLW:
    """``WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_{train,test}.txt`` (one
    face per line: 196 coordinates, ``x_min y_min x_max y_max``, six 0/1 flags pose, expression,
    illumination, make-up, occlusion, blur, and the image path under ``WFLW_images/``).

    Splits: ``train``, ``test`` (= full) and one test subset per attribute (``test_pose``, ...).
    """

    splits = ("train", "test") + tuple(f"test_{a}" for a in ATTRIBUTES)
    num_points = 98

    def __init__(self, root: str | os.PathLike[str], split: str = "train"):
        check_split(split, self.splits, "WFLW")
        root = Path(root)
        self.images = require_dir(root / "WFLW_images", "WFLW image folder")
        part = "train" if split == "train" else "test"
        anno = require_file(root / ANNOTATION_DIR / f"list_98pt_rect_attr_{part}.txt", "WFLW annotation file")
        attribute = split[len("test_") :] if split.startswith("test_") else None
        self.records: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
        for lineno, line in enumerate(anno.read_text().splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != FIELDS:
                raise ValueError(f"{anno}:{lineno}: {len(fields)} fields, expected {FIELDS}")
            landmarks = np.asarray(fields[:196], dtype=np.float32).reshape(98, 2)
            box = np.asarray(fields[196:200], dtype=np.float32)
            flags = np.asarray(fields[200:206], dtype=np.int64)
            if attribute is None or flags[ATTRIBUTES.index(attribute)] == 1:
                self.records.append((fields[206], landmarks, box, flags))
        if not self.records:
            raise DatasetLayoutError(f"WFLW: no face for split {split!r} in {anno}")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        name, landmarks, box, flags = self.records[index]
        image = load_rgb(require_file(self.images / name, "WFLW image"))
        return {"image": image, "landmarks": landmarks.copy(), "box": box.copy(), "attributes": flags.copy()}
