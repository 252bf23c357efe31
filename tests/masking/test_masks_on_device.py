"""Masks built on the device from the workers' draws (``masker.draws`` + ``masker.batch_from_draws``): the very
entries of the workers' ``masker.batch`` for the same generators, exact counts, no host sync in the torch code
(the scatter histogram is checked against the bincount one on CPU tensors)."""

from __future__ import annotations

import pytest
import torch
from masker_label_maps import random_faces
from test_masking_structured import crafted_face

from pacofr.masking import NO_COVERED_GROUP, RandomMasker, StructuredMasker, num_masked_patches, on_device
from pacofr.masking.histograms import patch_region_histograms


def stacked_draws(masker, keys_seeds: list[int], num_patches: int) -> dict[str, torch.Tensor]:
    per_sample = [masker.draws(torch.Generator().manual_seed(s), num_patches) for s in keys_seeds]
    return {name: torch.stack([d[name] for d in per_sample]) for name in per_sample[0]}


def maps() -> torch.Tensor:
    faces = random_faces(24, seed=29) + [crafted_face(), torch.zeros(224, 224, dtype=torch.long)]  # last: no cover
    hair = torch.full((224, 224), 13, dtype=torch.long)  # hair (label 13): present but too large to cover
    return torch.stack([*faces, hair]).to(torch.uint8)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"boundary_neighbours": True},
        {"touch_threshold": 0.2},
        {"mask_ratio": 0.4},
        {"mask_ratio": 0.0},
        {"component_probs": {"hair": 1}},
        {"component_probs": {"nose": 3.0, "mouth": 1.0}},
        {"per_batch_component": True},
    ],
)
def test_structured_masks_from_draws_equal_the_workers_masks(options: dict) -> None:
    masker = StructuredMasker(**options)
    segs = maps()
    seeds = [100 + i for i in range(len(segs))]
    in_workers = masker.batch(segs, [torch.Generator().manual_seed(s) for s in seeds])
    from_draws = masker.batch_from_draws(segs, stacked_draws(masker, seeds, 196))
    assert set(from_draws) == set(in_workers)
    for name, value in in_workers.items():
        assert from_draws[name].dtype == value.dtype and torch.equal(from_draws[name], value), name
    budget = num_masked_patches(196, masker.mask_ratio)
    assert (from_draws["mask"].sum(1) == budget).all()
    assert (from_draws["covered_patches"] <= from_draws["mask"]).all()
    assert int(from_draws["covered"][-2]) == int(from_draws["covered"][-1]) == NO_COVERED_GROUP


def test_draws_leave_the_fallback_and_cover_draws_from_the_same_start() -> None:
    masker = StructuredMasker()
    draws = masker.draws(torch.Generator().manual_seed(7), 196)
    assert draws["cover"].dtype == torch.float64 and draws["cover"].shape == (198,)
    assert torch.equal(draws["cover"], torch.rand(198, generator=torch.Generator().manual_seed(7), dtype=torch.float64))
    assert torch.equal(draws["fallback"], torch.rand(196, generator=torch.Generator().manual_seed(7)))


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.0])
def test_random_masks_from_draws_equal_the_per_sample_masks(ratio: float) -> None:
    masker = RandomMasker(mask_ratio=ratio)
    segs = maps()
    seeds = list(range(len(segs)))
    in_workers = masker.batch(segs, [torch.Generator().manual_seed(s) for s in seeds])
    from_draws = masker.batch_from_draws(segs, stacked_draws(masker, seeds, 196))
    for name, value in in_workers.items():
        assert torch.equal(from_draws[name], value), name
    assert (from_draws["mask"].sum(1) == num_masked_patches(196, ratio)).all()


def test_scatter_histograms_equal_the_bincount_ones() -> None:
    """The non-CPU histogram (scatter of ones, no sync) gives the CPU code's floats exactly; run here on CPU
    tensors by calling the device branch directly."""
    segs = maps()
    for patch in (16, 14, 32):
        size = 224 // patch * patch
        cut = segs[:, :size, :size].contiguous()
        expected = patch_region_histograms(cut, patch)
        got = on_device.scatter_region_histograms(cut, patch)
        assert torch.equal(got, expected), patch
