"""What the maskers share: the input check with the region histograms, and random top-ups of a mask.

The mask budget (``num_masked_patches``) and the result type (``MaskResult``) are part of the batch schema,
``pacofr.data.batch``."""

from __future__ import annotations

import torch

from pacofr.masking.histograms import patch_grid, patch_region_histograms


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
