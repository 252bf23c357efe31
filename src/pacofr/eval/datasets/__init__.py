"""One reader per public benchmark layout (see docs/datasets.md), all returning the raw samples
described in :mod:`pacofr.eval.datasets.base`."""

from __future__ import annotations

from .aflw19 import AFLW19
from .aflw2000 import AFLW2000, Pose300WLP
from .base import DatasetLayoutError
from .celeba_attr import CelebAAttributes
from .celebamask_hq import CelebAMaskHQ
from .ibug300w import IBUG300W
from .lapa import LaPa
from .occlusion import Occluded
from .rafdb import RAFDB
from .synth import SynthFaces, SynthPairs
from .verification_bin import VerificationBin
from .wflw import WFLW

READERS = {
    "lapa": LaPa,
    "celebamask_hq": CelebAMaskHQ,
    "300w": IBUG300W,
    "wflw": WFLW,
    "aflw19": AFLW19,
    "aflw2000": AFLW2000,
    "300w_lp": Pose300WLP,
    "verification_bin": VerificationBin,
    "celeba_attr": CelebAAttributes,
    "rafdb": RAFDB,
    "synth": SynthFaces,
    "synth_pairs": SynthPairs,
}

__all__ = [
    "AFLW19",
    "AFLW2000",
    "CelebAAttributes",
    "CelebAMaskHQ",
    "DatasetLayoutError",
    "IBUG300W",
    "LaPa",
    "Occluded",
    "Pose300WLP",
    "RAFDB",
    "READERS",
    "SynthFaces",
    "SynthPairs",
    "VerificationBin",
    "WFLW",
]
