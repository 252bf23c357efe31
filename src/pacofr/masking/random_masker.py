"""MAE's random masking: argsort of uniform noise, the last ``round(N * ratio)`` patches hidden."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from pacofr.data.batch import NO_COVERED_GROUP, Masker, MaskResult, check_mask_ratio, num_masked_patches
from pacofr.masking.common import sample_histograms
from pacofr.masking.histograms import patch_grid
from pacofr.masking.on_device import ranks, region_histograms


class RandomMasker(Masker):
    """Uniformly random patches (MAE baseline); the parsing map is only used for ``region_hist``."""

    label_dtype = torch.uint8  # the map only feeds patch_region_histograms, which takes any integer dtype

    def __init__(self, patch_size: int = 16, mask_ratio: float = 0.75) -> None:
        self.patch_size = int(patch_size)
        self.mask_ratio = check_mask_ratio(mask_ratio)

    def __call__(self, seg: torch.Tensor, generator: torch.Generator) -> MaskResult:
        hist, _ = sample_histograms(seg, self.patch_size)
        num_patches = hist.shape[0]
        num_masked = num_masked_patches(num_patches, self.mask_ratio)
        noise = torch.rand(num_patches, generator=generator)
        ids_shuffle = torch.argsort(noise)  # MAE keeps the first N - num_masked, hides the rest
        mask = torch.zeros(num_patches, dtype=torch.bool)
        mask[ids_shuffle[num_patches - num_masked :]] = True
        return MaskResult(mask=mask, covered=NO_COVERED_GROUP, region_hist=hist)

    def draws(self, generator: torch.Generator, num_patches: int) -> dict[str, torch.Tensor]:
        """The noise ``__call__`` draws for one sample (masks on the device: :mod:`pacofr.masking.on_device`)."""
        return {"noise": torch.rand(num_patches, generator=generator)}

    def batch_from_draws(self, segs: torch.Tensor, draws: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The stacked ``__call__`` results of checked maps ``(B, H, W)`` from the stacked :meth:`draws`, on the
        maps' device, without a host sync: the ``N - K`` lowest noise values stay visible."""
        if segs.dim() != 3:
            raise ValueError(f"need (B, H, W) maps, got {tuple(segs.shape)}")
        rows, cols = patch_grid(segs, self.patch_size)
        num_patches = rows * cols
        mask = ranks(draws["noise"].to(segs.device)) >= num_patches - num_masked_patches(num_patches, self.mask_ratio)
        return {
            "mask": mask,
            "covered": torch.full((segs.shape[0],), NO_COVERED_GROUP, dtype=torch.long, device=segs.device),
            "region_hist": region_histograms(segs, self.patch_size),
            "covered_patches": torch.zeros_like(mask),
        }

    def __repr__(self) -> str:
        return f"RandomMasker(patch_size={self.patch_size}, mask_ratio={self.mask_ratio})"
