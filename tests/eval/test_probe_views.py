"""The probe's views: the full sequence as timm reads it, and 25 %-visible subsets the encoder sees alone."""

from __future__ import annotations

import pytest
import torch

from pacofr.eval.module import default_feature_layers
from pacofr.eval.probe_views import SubsetReading, ViewReader, draw_cover, draw_subsets, full_tokens, subset_tokens
from pacofr.models.sizes import build_encoder


@pytest.fixture(scope="module")
def encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_encoder("tiny", 128, 16).eval()  # the study's geometry: 8 x 8 = 64 patches


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))


def layers_of(encoder: torch.nn.Module) -> list[int]:
    return default_feature_layers(len(encoder.blocks))


@pytest.mark.parametrize(("patches", "visible", "runs"), [(64, 16, 4), (49, 12, 5), (10, 10, 1), (7, 3, 3)])
def test_a_cover_shows_every_patch_in_runs_of_equal_length(patches, visible, runs):
    cover = draw_cover(patches, visible, torch.Generator().manual_seed(0))
    assert cover.shape == (runs, visible)
    assert set(cover.flatten().tolist()) == set(range(patches))  # every patch visible at least once
    assert all(len(set(run.tolist())) == visible for run in cover)  # no patch twice in one forward
    if patches % visible == 0:
        assert sorted(cover.flatten().tolist()) == list(range(patches))  # a partition: each patch exactly once


def test_full_view_is_what_timm_reads(encoder, images):
    layers = layers_of(encoder)
    feats = encoder.forward_intermediates(images, indices=layers, intermediates_only=True, stop_early=True)
    reference = torch.cat(list(feats), dim=1).flatten(2).transpose(1, 2)
    assert torch.equal(full_tokens(encoder, images, layers), reference)


def test_one_subset_of_all_patches_is_the_full_view(encoder, images):
    """Positions are added before the patches are picked: a subset holding every patch (in any order) gives
    each patch the token it has in the full sequence."""
    layers = layers_of(encoder)
    subsets = torch.stack([torch.randperm(64, generator=torch.Generator().manual_seed(i))[None] for i in range(2)])
    got = subset_tokens(encoder, images, layers, subsets)
    torch.testing.assert_close(got, full_tokens(encoder, images, layers), atol=1e-4, rtol=1e-4)


def test_subset_view_runs_the_encoder_on_16_patch_sequences(encoder, images):
    seen = []
    hook = encoder.blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[:2])))
    try:
        out = ViewReader(encoder, layers_of(encoder), ("subsets",), SubsetReading(0.25, covers=1))(images)
    finally:
        hook.remove()
    assert seen == [(2 * 4, 1 + 16)]  # 4 subsets per face, each the class token + 16 of the 64 patches
    assert out["subsets"].shape == (2, 64, 4 * 192)
    assert torch.isfinite(out["subsets"]).all()


def test_subset_tokens_are_the_mean_over_the_subsets_that_held_the_patch(encoder, images):
    layers = layers_of(encoder)
    first, second = torch.arange(16), torch.arange(8, 24)  # patches 8..15 are in both
    both = subset_tokens(encoder, images[:1], layers, torch.stack([first, second])[None])
    one = subset_tokens(encoder, images[:1], layers, first[None, None])
    two = subset_tokens(encoder, images[:1], layers, second[None, None])
    torch.testing.assert_close(both[0, :8], one[0, :8])
    torch.testing.assert_close(both[0, 8:16], (one[0, 8:16] + two[0, 8:16]) / 2)
    torch.testing.assert_close(both[0, 16:24], two[0, 16:24])
    assert (both[0, 24:] == 0).all()  # never visible: zero (a cover never leaves a patch out)


def test_the_subset_draw_is_the_same_for_every_encoder_and_reader():
    """Two readers with the same seed draw the same subsets for the same list of faces: every arm, and the
    clean and occluded copy of a test face, are read through the same subsets."""
    a = draw_subsets(5, 64, SubsetReading(), torch.Generator().manual_seed(0))
    b = draw_subsets(5, 64, SubsetReading(), torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (5, 4, 16)
    assert not torch.equal(a[0], a[1])  # each face its own subsets
    assert draw_subsets(2, 64, SubsetReading(covers=3), torch.Generator()).shape == (2, 12, 16)


def test_unknown_views_are_refused(encoder):
    with pytest.raises(ValueError, match="views"):
        ViewReader(encoder, [0], ("full", "sideways"), SubsetReading())
    with pytest.raises(ValueError, match="views"):
        ViewReader(encoder, [0], (), SubsetReading())
