"""Behaviour every masker shares (exact count, determinism, outputs) plus the random and block maskers."""

from __future__ import annotations

import pytest
import torch
from masker_label_maps import random_faces

from pacofr.data.format import NUM_REGIONS
from pacofr.masking import (
    MASKERS,
    NO_COVERED_GROUP,
    BlockMasker,
    MaskResult,
    RandomMasker,
    StructuredMasker,
    build_masker,
    num_masked_patches,
    patch_region_histograms,
)

NAMES = sorted(MASKERS)
RATIOS = (0.0, 0.1, 0.3, 0.5, 0.6, 0.75, 0.9)


def test_budget_rounding() -> None:
    assert num_masked_patches(196, 0.75) == 147
    assert num_masked_patches(196, 0.0) == 0
    assert num_masked_patches(10, 0.25) == 2  # 2.5 -> even
    assert num_masked_patches(14, 0.25) == 4  # 3.5 -> even
    assert num_masked_patches(24, 0.3) == 7  # 7.2
    with pytest.raises(ValueError, match="mask_ratio"):
        num_masked_patches(196, 1.0)
    with pytest.raises(ValueError, match="mask_ratio"):
        RandomMasker(mask_ratio=-0.1)


@pytest.mark.parametrize("name", NAMES)
def test_exact_mask_count(name: str) -> None:
    faces = random_faces(12, seed=11)
    odd_grid = random_faces(4, seed=12, size=64, width=96)  # 4x6 patches
    for ratio in RATIOS:
        masker = build_masker(name, patch_size=16, mask_ratio=ratio)
        generator = torch.Generator().manual_seed(int(ratio * 100))
        for seg in faces + odd_grid:
            result = masker(seg, generator)
            num_patches = (seg.shape[0] // 16) * (seg.shape[1] // 16)
            assert result.mask.shape == (num_patches,) and result.mask.dtype == torch.bool
            assert int(result.mask.sum()) == num_masked_patches(num_patches, ratio), (name, ratio)
    fine = build_masker(name, patch_size=8, mask_ratio=0.75)  # 28x28 = 784 patches
    result = fine(faces[0], torch.Generator().manual_seed(0))
    assert int(result.mask.sum()) == 588


@pytest.mark.parametrize("name", NAMES)
def test_outputs_are_complete(name: str) -> None:
    seg = random_faces(1, seed=2)[0]
    result = build_masker(name)(seg, torch.Generator().manual_seed(0))
    assert isinstance(result, MaskResult)
    torch.testing.assert_close(result.region_hist, patch_region_histograms(seg, 16))
    assert result.covered_patches.shape == (196,) and result.covered_patches.dtype == torch.bool
    assert not (result.covered_patches & ~result.mask).any()
    batch = result.as_dict()
    assert set(batch) == {"mask", "covered", "region_hist", "covered_patches"}
    assert batch["covered"].dtype == torch.long and batch["region_hist"].shape == (196, NUM_REGIONS)
    if name != "structured":
        assert result.covered == NO_COVERED_GROUP and not result.covered_patches.any()


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_for_a_generator(name: str) -> None:
    faces = random_faces(5, seed=21)
    masker = build_masker(name, mask_ratio=0.6)

    def run(seed: int) -> list[MaskResult]:
        generator = torch.Generator().manual_seed(seed)
        return [masker(seg, generator) for seg in faces]

    first, again, other = run(7), run(7), run(8)
    for a, b in zip(first, again):
        assert torch.equal(a.mask, b.mask) and a.covered == b.covered
        assert torch.equal(a.covered_patches, b.covered_patches)
    assert any(not torch.equal(a.mask, c.mask) for a, c in zip(first, other))


def test_random_masker_is_uniform_over_patches() -> None:
    seg = random_faces(1, seed=4)[0]
    masker = RandomMasker(mask_ratio=0.5)
    generator = torch.Generator().manual_seed(0)
    freq = torch.stack([masker(seg, generator).mask for _ in range(400)]).float().mean(dim=0)
    # Binomial(400, 0.5) per patch: std 0.025; every patch within 5 std of 0.5.
    assert (freq - 0.5).abs().max() < 0.125


def _masked_neighbour_share(mask: torch.Tensor, rows: int, cols: int) -> float:
    grid = mask.reshape(rows, cols)
    padded = torch.nn.functional.pad(grid[None, None].float(), (1, 1, 1, 1))[0, 0]
    neighbours = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
    return float((neighbours[grid] > 0).float().mean())


def test_block_masker_makes_blocks() -> None:
    seg = random_faces(1, seed=9)[0]
    generator = torch.Generator().manual_seed(0)
    block = BlockMasker(mask_ratio=0.4)
    random = RandomMasker(mask_ratio=0.4)
    block_share = sum(_masked_neighbour_share(block(seg, generator).mask, 14, 14) for _ in range(50)) / 50
    random_share = sum(_masked_neighbour_share(random(seg, generator).mask, 14, 14) for _ in range(50)) / 50
    # Blocks of >= 16 patches: nearly every masked patch has a masked 4-neighbour; random ~ 1 - 0.6^4.
    assert block_share > 0.97
    assert block_share > random_share + 0.05


def test_block_masker_tops_up_when_blocks_do_not_fit() -> None:
    seg = torch.zeros(48, 48, dtype=torch.long)  # 3x3 grid: a 16-patch block can never fit
    result = BlockMasker(mask_ratio=0.5)(seg, torch.Generator().manual_seed(0))
    assert int(result.mask.sum()) == num_masked_patches(9, 0.5)


@pytest.mark.parametrize("name", NAMES)
def test_batched_or_float_maps_are_rejected(name: str) -> None:
    masker = build_masker(name)
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="one label map"):
        masker(torch.zeros(2, 224, 224, dtype=torch.long), generator)
    with pytest.raises(TypeError, match="integer label ids"):
        masker(torch.zeros(224, 224), generator)
    with pytest.raises(ValueError, match="not a whole number"):
        masker(torch.zeros(224, 200, dtype=torch.long), generator)


@pytest.mark.parametrize("name", NAMES)
def test_uint8_maps_give_the_same_result_as_int64(name: str) -> None:
    """The data workers pass the decoder's uint8 map to maskers that declare ``label_dtype = uint8``."""
    masker = build_masker(name)
    assert masker.label_dtype == torch.uint8
    for seed, seg in enumerate(random_faces(6, seed=17)):
        wide = masker(seg.long(), torch.Generator().manual_seed(seed))
        narrow = masker(seg.to(torch.uint8), torch.Generator().manual_seed(seed))
        assert torch.equal(wide.mask, narrow.mask) and wide.covered == narrow.covered
        assert torch.equal(wide.region_hist, narrow.region_hist)
        assert torch.equal(wide.covered_patches, narrow.covered_patches)


def test_registry() -> None:
    assert isinstance(build_masker("random"), RandomMasker)
    masker = build_masker("structured", patch_size=8, mask_ratio=0.5, component_probs={"nose": 1.0})
    assert isinstance(masker, StructuredMasker) and masker.patch_size == 8 and masker.mask_ratio == 0.5
    with pytest.raises(ValueError, match="unknown masker 'mae'"):
        build_masker("mae")


@pytest.mark.parametrize("name", NAMES)
def test_batch_stacks_the_per_sample_results(name: str) -> None:
    masker = build_masker(name)
    maps = random_faces(3, seed=23)
    batched = masker.batch(torch.stack(maps), [torch.Generator().manual_seed(i) for i in range(3)])
    for i, seg in enumerate(maps):
        alone = masker(seg, torch.Generator().manual_seed(i)).as_dict()
        assert set(batched) == set(alone)
        for key, value in alone.items():
            assert torch.equal(batched[key][i], value), f"{name}: {key} of sample {i}"
