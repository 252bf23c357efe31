import pytest
import torch

from pacofr.models.patches import normalize_patches, num_masked_patches, patchify, unpatchify


def test_patchify_matches_mae_layout_and_round_trips():
    x = torch.randn(2, 3, 32, 48)
    p = 16
    got = patchify(x, p)
    # MAE: reshape to (n, c, h, p, w, q), einsum nchpwq->nhwpqc
    ref = torch.einsum("nchpwq->nhwpqc", x.reshape(2, 3, 2, p, 3, p)).reshape(2, 6, p * p * 3)
    assert torch.equal(got, ref)
    assert torch.equal(unpatchify(got, p, (2, 3)), x)


def test_patchify_refuses_non_multiple_sizes():
    with pytest.raises(ValueError, match="multiple"):
        patchify(torch.zeros(1, 3, 30, 32), 16)


def test_normalize_patches_is_per_patch_standardisation():
    x = torch.rand(2, 5, 768) * 7 + 3
    y = normalize_patches(x.to(torch.bfloat16))
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.mean(-1), torch.zeros(2, 5), atol=1e-4, rtol=0)
    torch.testing.assert_close(y.var(-1), torch.ones(2, 5), atol=1e-3, rtol=0)


def test_num_masked_patches():
    assert num_masked_patches(196, 0.75) == 147
    assert num_masked_patches(16, 0.75) == 12
    with pytest.raises(ValueError):
        num_masked_patches(16, 1.0)
