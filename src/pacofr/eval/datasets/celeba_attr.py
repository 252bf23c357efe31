"""CelebA 40 binary attributes with the official train / val / test partition."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .base import DatasetLayoutError, Sample, check_split, load_rgb

SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def _find(root: Path, *candidates: str) -> Path:
    for rel in candidates:
        if (root / rel).exists():
            return root / rel
    raise DatasetLayoutError(f"CelebA: none of {candidates} under {root} (see docs/datasets.md)")


class CelebAAttributes:
    """``list_attr_celeba.txt`` (count line, 40 names, then ``<file> ±1 x40``), ``list_eval_partition.txt``
    (``<file> 0|1|2``) and ``img_align_celeba/``; also the Google-Drive layout with ``Anno/``,
    ``Eval/`` and ``Img/img_align_celeba/``. Attributes are returned as 0/1."""

    splits = tuple(SPLIT_IDS)

    def __init__(self, root: str | os.PathLike[str], split: str = "train"):
        check_split(split, self.splits, "CelebA")
        root = Path(root)
        attr_file = _find(root, "list_attr_celeba.txt", "Anno/list_attr_celeba.txt")
        part_file = _find(root, "list_eval_partition.txt", "Eval/list_eval_partition.txt")
        self.images = _find(root, "img_align_celeba", "Img/img_align_celeba")
        lines = attr_file.read_text().splitlines()
        self.attr_names = tuple(lines[1].split())
        if len(self.attr_names) != 40:
            raise ValueError(f"{attr_file}: expected 40 attribute names on line 2, got {len(self.attr_names)}")
        attrs = {}
        for lineno, line in enumerate(lines[2:], 3):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 41:
                raise ValueError(f"{attr_file}:{lineno}: expected a file name and 40 values")
            attrs[fields[0]] = (np.asarray(fields[1:], dtype=np.int64) > 0).astype(np.int64)
        self.items: list[tuple[str, np.ndarray]] = []
        for line in part_file.read_text().splitlines():
            fields = line.split()
            if len(fields) == 2 and int(fields[1]) == SPLIT_IDS[split]:
                if fields[0] not in attrs:
                    raise ValueError(f"CelebA: {fields[0]} is in {part_file.name} but not in {attr_file.name}")
                self.items.append((fields[0], attrs[fields[0]]))
        if not self.items:
            raise DatasetLayoutError(f"CelebA: split {split!r} is empty in {part_file}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        name, attrs = self.items[index]
        return {"image": load_rgb(self.images / name), "attrs": attrs.copy()}
