"""AFLW-19 (19 landmarks) from ``AFLWinfo_release.mat``: 20000 train / 4386 test faces, frontal subset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .base import DatasetLayoutError, Sample, check_split, load_rgb, require_dir, require_file


class AFLW19:
    """``<root>/AFLWinfo_release.mat`` and ``<root>/data/flickr/<nameList entry>``.

    The .mat holds ``nameList`` (N names), ``data`` (N x 38: x1..x19, y1..y19, 1-based),
    ``bbox`` (N x 4: left, right, top, bottom), ``mask_new`` (N x 19 visibility) and ``ra`` (a
    1-based permutation: its first 20000 entries are train, the rest test). ``test_frontal`` keeps
    the test faces with all 19 points visible (1314 faces). Normalise NME by the box diagonal
    (FaRL's headline) or ``sqrt(w * h)``.
    """

    splits = ("train", "test", "test_frontal")
    num_points = 19

    def __init__(self, root: str | os.PathLike[str], split: str = "train"):
        check_split(split, self.splits, "AFLW-19")
        from scipy.io import loadmat  # only this reader and the pose readers need scipy

        root = Path(root)
        self.images = require_dir(root / "data" / "flickr", "AFLW image folder")
        info = loadmat(require_file(root / "AFLWinfo_release.mat", "AFLW-19 annotation"))
        try:
            self.names = [_matlab_str(s) for s in info["nameList"].reshape(-1)]
            self.coords = np.asarray(info["data"], dtype=np.float32)
            self.boxes = np.asarray(info["bbox"], dtype=np.float32)
            self.visible = np.asarray(info["mask_new"]).astype(bool)
            order = np.asarray(info["ra"]).reshape(-1).astype(np.int64) - 1
        except KeyError as err:
            raise DatasetLayoutError(f"AFLW-19: {root / 'AFLWinfo_release.mat'} lacks {err}") from err
        n = len(self.names)
        if sorted(order.tolist()) != list(range(n)) or self.coords.shape != (n, 38):
            raise ValueError(
                f"AFLW-19: inconsistent annotation ({n} names, data {self.coords.shape}, ra {order.shape})"
            )
        n_train = min(20000, n)
        if split == "train":
            self.indices = order[:n_train]
        else:
            self.indices = order[n_train:]
            if split == "test_frontal":
                self.indices = self.indices[self.visible[self.indices].all(1)]
        if len(self.indices) == 0:
            raise DatasetLayoutError(f"AFLW-19: split {split!r} is empty")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Sample:
        i = int(self.indices[index])
        landmarks = self.coords[i].reshape(2, 19).T.copy() - 1.0  # Matlab 1-based -> 0-based
        left, right, top, bottom = self.boxes[i] - 1.0
        return {
            "image": load_rgb(require_file(self.images / self.names[i], "AFLW image")),
            "landmarks": landmarks,
            "box": np.array([left, top, right, bottom], dtype=np.float32),
            "visible": self.visible[i].copy(),
        }


def _matlab_str(cell: object) -> str:
    """loadmat wraps each string of a cell array in nested arrays: unwrap to the str."""
    while isinstance(cell, np.ndarray):
        if cell.size != 1:
            raise DatasetLayoutError(f"AFLW-19: nameList entry {cell!r} is not one string")
        cell = cell.reshape(-1)[0]
    return str(cell)
