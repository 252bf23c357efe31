"""Patch masks built per sample in the data workers: region histograms and the random (MAE),
block (BEiT) and structured (PaCo-FR / FSFM) maskers."""

from pacofr.data.batch import NO_COVERED_GROUP, Masker, MaskResult, num_masked_patches
from pacofr.masking.block_masker import BlockMasker
from pacofr.masking.histograms import patch_region_histograms
from pacofr.masking.random_masker import RandomMasker
from pacofr.masking.registry import MASKERS, build_masker
from pacofr.masking.structured_masker import StructuredMasker

__all__ = [
    "MASKERS",
    "NO_COVERED_GROUP",
    "BlockMasker",
    "MaskResult",
    "Masker",
    "RandomMasker",
    "StructuredMasker",
    "build_masker",
    "num_masked_patches",
    "patch_region_histograms",
]
