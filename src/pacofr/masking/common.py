"""What the maskers share: the exact mask budget, the result with the covered patches, random top-ups."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pacofr.masking.base import MaskResult
from pacofr.masking.histograms import patch_grid, patch_region_histograms


def check_mask_ratio(mask_ratio: float) -> float:
    """``mask_ratio`` as a float after checking it lies in [0, 1) (1 would leave the encoder no token)."""
    ratio = float(mask_ratio)
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return ratio


def num_masked_patches(num_patches: int, mask_ratio: float) -> int:
    """Exact number of masked patches: Python's ``round(num_patches * mask_ratio)``.

    Every masker hides exactly this many patches so the model can gather a fixed count per
    sample; the model side must use the same rule (``pacofr.models.patches.num_masked_patches``
    does). Python's round sends exact halves to the even integer: 196 patches at 0.75 -> 147,
    10 at 0.25 -> 2 (2.5 to even), 14 at 0.25 -> 4 (3.5 to even).
    """
    return int(round(num_patches * check_mask_ratio(mask_ratio)))


@dataclass
class RegionMaskResult(MaskResult):
    """A :class:`MaskResult` that also says which patches belong to the covered facial component.

    ``covered_patches`` is bool ``(N,)``: the patches of the component the structured masker chose
    to cover (all of them masked), all False when ``covered == NO_COVERED_GROUP``. Every masker in
    this package returns this type, so a batch always carries the key whatever the masker.
    """

    covered_patches: torch.Tensor = None  # type: ignore[assignment]  # filled in __post_init__ if omitted

    def __post_init__(self) -> None:
        if self.covered_patches is None:
            self.covered_patches = torch.zeros_like(self.mask)

    def as_dict(self) -> dict[str, torch.Tensor]:
        out = super().as_dict()
        out["covered_patches"] = self.covered_patches
        return out


def sample_histograms(seg: torch.Tensor, patch_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """A masker's input check and first step: ``(region_hist (N, 9), (rows, cols))`` of one (H, W) map."""
    if seg.dim() != 2:
        raise ValueError(f"maskers take one label map (H, W), got shape {tuple(seg.shape)}")
    return patch_region_histograms(seg, patch_size), patch_grid(seg, patch_size)


def mask_random_extra(mask: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """Copy of ``mask`` with ``count`` more patches masked, drawn uniformly among the unmasked ones."""
    if count <= 0:
        return mask.clone()
    keys = torch.rand(mask.shape[0], generator=generator)
    keys = keys.masked_fill(mask, 2.0)  # already-masked patches sort last and are never drawn
    chosen = torch.argsort(keys)[:count]
    out = mask.clone()
    out[chosen] = True
    return out
