"""RAF-DB basic expression set (7 classes), aligned 100 x 100 faces."""

from __future__ import annotations

import os
from pathlib import Path

from .base import DatasetLayoutError, Sample, check_split, load_rgb, require_dir, require_file

# list_patition_label.txt uses 1..7 in this order; we return 0..6.
RAFDB_CLASSES: tuple[str, ...] = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")


class RAFDB:
    """``EmoLabel/list_patition_label.txt`` (sic: ``train_00001.jpg 5`` / ``test_0001.jpg 1``) and
    ``Image/aligned/<stem>_aligned.jpg``; the split is the file-name prefix."""

    splits = ("train", "test")
    label_names = RAFDB_CLASSES

    def __init__(self, root: str | os.PathLike[str], split: str = "train"):
        check_split(split, self.splits, "RAF-DB")
        root = Path(root)
        labels = require_file(root / "EmoLabel" / "list_patition_label.txt", "RAF-DB label list")
        self.images = require_dir(root / "Image" / "aligned", "RAF-DB aligned image folder")
        self.items: list[tuple[str, int]] = []
        for lineno, line in enumerate(labels.read_text().splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not 1 <= int(fields[1]) <= 7:
                raise ValueError(f"{labels}:{lineno}: expected '<name>.jpg <1..7>'")
            if fields[0].startswith(split + "_"):
                self.items.append((fields[0], int(fields[1]) - 1))
        if not self.items:
            raise DatasetLayoutError(f"RAF-DB: no {split}_* entry in {labels}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        name, label = self.items[index]
        stem = Path(name).stem
        return {"image": load_rgb(require_file(self.images / f"{stem}_aligned.jpg", "RAF-DB image")), "label": label}
