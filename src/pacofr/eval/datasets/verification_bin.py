"""Face verification pairs in the insightface ``.bin`` format (LFW, CFP-FP, AgeDB-30, ...)."""

from __future__ import annotations

import os
from pathlib import Path

from ..unpickle import load_verification_bin
from .base import Sample, decode_rgb, require_file

BIN_NAMES = ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw", "cfp_ff", "vgg2_fp")


class VerificationBin:
    """``<root>/<name>.bin``: a pickle of (2n encoded 112 x 112 aligned faces, n same/different flags);
    pair i is images 2i and 2i+1. Read with a restricted unpickler (the file is untrusted input)."""

    splits = BIN_NAMES

    def __init__(self, root: str | os.PathLike[str], split: str = "lfw"):
        path = require_file(Path(root) / f"{split}.bin", f"verification file {split}.bin")
        self.images, self.issame = load_verification_bin(path)

    def __len__(self) -> int:
        return len(self.issame)

    def __getitem__(self, index: int) -> Sample:
        return {
            "image": decode_rgb(self.images[2 * index]),
            "image_b": decode_rgb(self.images[2 * index + 1]),
            "issame": self.issame[index],
            "index": index,
        }
