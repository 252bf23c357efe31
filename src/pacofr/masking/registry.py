"""Build a masker by name (config files name maskers as strings)."""

from __future__ import annotations

from typing import Any

from pacofr.data.batch import Masker
from pacofr.masking.block_masker import BlockMasker
from pacofr.masking.random_masker import RandomMasker
from pacofr.masking.structured_masker import StructuredMasker

MASKERS: dict[str, type] = {
    "random": RandomMasker,  # MAE
    "block": BlockMasker,  # BEiT
    "structured": StructuredMasker,  # PaCo-FR / FSFM (CRFR-P)
}


def build_masker(name: str, **kwargs: Any) -> Masker:
    """``build_masker("structured", patch_size=16, mask_ratio=0.75, ...)``; kwargs go to the class."""
    try:
        cls = MASKERS[name]
    except KeyError:
        raise ValueError(f"unknown masker {name!r}; choose from {sorted(MASKERS)}") from None
    return cls(**kwargs)
