"""CelebAMask-HQ face parsing: per-part binary masks merged into the 19 ``pacofr.data.format`` labels."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from pacofr.data.format import FLIP_SWAP_PAIRS, LABEL_IDS, LABEL_NAMES

from .base import (
    SIDE_CHECK_MAPS,
    DatasetLayoutError,
    Sample,
    check_split,
    load_gray,
    names_sides_from_viewer,
    require_dir,
    require_file,
    swap_ids,
)

# Parts painted in this order, later ones over earlier ones (FaRL's order: accessories and hair
# end up on top of skin/neck/cloth, as in the official preprocessing).
MERGE_ORDER: tuple[str, ...] = (
    "neck",
    "skin",
    "cloth",
    "l_ear",
    "r_ear",
    "l_brow",
    "r_brow",
    "l_eye",
    "r_eye",
    "nose",
    "mouth",
    "l_lip",
    "u_lip",
    "hair",
    "eye_g",
    "hat",
    "ear_r",
    "neck_l",
)
MASK_SIZE = 512  # the annotation masks are 512 x 512; the 1024 x 1024 images are resized to match
# Official CelebA partition by the original file number (identical to list_eval_partition.txt).
CELEBA_VAL_FIRST, CELEBA_TEST_FIRST = 162771, 182638


class CelebAMaskHQ:
    """``CelebA-HQ-img/<i>.jpg``, ``CelebAMask-HQ-mask-anno/<i // 2000>/<i:05d>_<part>.png`` and
    ``CelebA-HQ-to-CelebA-mapping.txt`` (split by each image's original CelebA file; a
    ``list_eval_partition.txt`` in the root, if present, is used instead of the fixed boundaries)."""

    splits = ("train", "val", "test")
    label_names = LABEL_NAMES

    def __init__(self, root: str | os.PathLike[str], split: str = "train"):
        check_split(split, self.splits, "CelebAMask-HQ")
        self.root = Path(root)
        self.images = require_dir(self.root / "CelebA-HQ-img", "CelebAMask-HQ image folder")
        self.masks = require_dir(self.root / "CelebAMask-HQ-mask-anno", "CelebAMask-HQ mask folder")
        mapping = require_file(self.root / "CelebA-HQ-to-CelebA-mapping.txt", "CelebA-HQ to CelebA mapping")
        partition = _read_partition(self.root / "list_eval_partition.txt")
        wanted = self.splits.index(split)
        self.ids: list[int] = []
        for line in mapping.read_text().splitlines():
            fields = line.split()
            if len(fields) != 3 or not fields[2].endswith(".jpg"):
                continue  # header "idx orig_idx orig_file"
            hq_id, orig_file = int(fields[0]), fields[2]
            group = partition[orig_file] if partition else _celeba_group(orig_file)
            if group == wanted:
                self.ids.append(hq_id)
        if not self.ids:
            raise DatasetLayoutError(f"CelebAMask-HQ: no image of split {split!r} in {mapping}")
        # sides: pacofr's convention is the subject's; checked on the first maps like every parsing reader
        maps = (self.merged_mask(hq_id, swap=False) for hq_id in self.ids[:SIDE_CHECK_MAPS])
        self.swapped_sides = names_sides_from_viewer(maps, LABEL_IDS["l_eye"], LABEL_IDS["r_eye"])

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample:
        hq_id = self.ids[index]
        with Image.open(require_file(self.images / f"{hq_id}.jpg", "CelebA-HQ image")) as im:
            image = np.asarray(im.convert("RGB").resize((MASK_SIZE, MASK_SIZE), Image.BILINEAR))
        return {"image": image, "seg": self.merged_mask(hq_id)}

    def merged_mask(self, hq_id: int, swap: bool = True) -> np.ndarray:
        folder = self.masks / str(hq_id // 2000)
        seg = np.zeros((MASK_SIZE, MASK_SIZE), np.uint8)
        for part in MERGE_ORDER:
            path = folder / f"{hq_id:05d}_{part}.png"
            if path.is_file():  # a part absent from a face has no file
                mask = load_gray(path)
                if mask.shape != seg.shape:
                    raise ValueError(f"{path}: mask is {mask.shape}, expected {seg.shape}")
                seg[mask > 0] = LABEL_IDS[part]
        return swap_ids(seg, FLIP_SWAP_PAIRS) if swap and self.swapped_sides else seg


def _celeba_group(orig_file: str) -> int:
    number = int(Path(orig_file).stem)
    return 0 if number < CELEBA_VAL_FIRST else 1 if number < CELEBA_TEST_FIRST else 2


def _read_partition(path: Path) -> dict[str, int]:
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) == 2:
            out[fields[0]] = int(fields[1])
    return out
