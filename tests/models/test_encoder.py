"""The encoder is a drop-in timm ViT and its masked forward sees only the kept patches."""

import pytest
import timm
import torch
from timm.models import group_parameters

from pacofr.models import build_encoder, timm_name
from pacofr.models.pos_embed import sincos_pos_embed_2d

IMG = 64


def _images(b=2, seed=0):
    return torch.randn(b, 3, IMG, IMG, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("size", ["tiny", "small"])
@pytest.mark.parametrize("global_pool", ["token", "avg"])
def test_state_dict_loads_strictly_into_timm_and_gives_same_features(size, global_pool):
    torch.manual_seed(0)
    enc = build_encoder(size, img_size=IMG, global_pool=global_pool).eval()
    ref = timm.create_model(timm_name(size), pretrained=False, num_classes=0, img_size=IMG, global_pool=global_pool)
    ref.load_state_dict(enc.state_dict(), strict=True)
    ref.eval()
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(enc.forward_features(x), ref.forward_features(x), rtol=0, atol=0)
        torch.testing.assert_close(enc(x), ref(x), rtol=0, atol=0)
    assert enc(x).shape == (2, enc.embed_dim)


def test_pos_embed_is_fixed_sincos_with_zero_class_slot():
    enc = build_encoder("tiny", img_size=IMG)
    assert not enc.pos_embed.requires_grad
    assert torch.equal(enc.pos_embed[:, 0], torch.zeros_like(enc.pos_embed[:, 0]))
    torch.testing.assert_close(enc.pos_embed.data, sincos_pos_embed_2d(enc.embed_dim, (4, 4), 1))
    # every patch position is distinct
    assert torch.cdist(enc.pos_embed[0, 1:], enc.pos_embed[0, 1:]).add(torch.eye(16)).min() > 0.1
    # re-initialising keeps the table
    enc.init_weights("")
    torch.testing.assert_close(enc.pos_embed.data, sincos_pos_embed_2d(enc.embed_dim, (4, 4), 1))


def test_masked_forward_with_all_patches_equals_full_forward():
    enc = build_encoder("tiny", img_size=IMG).eval()
    x = _images()
    tokens = enc.embed_patches(x)
    all_idx = torch.arange(16).expand(2, -1)
    with torch.no_grad():
        full = enc.forward_features(x)
        torch.testing.assert_close(enc.forward_masked(tokens), full)
        torch.testing.assert_close(enc.forward_masked(tokens, all_idx), full)


def test_masked_forward_uses_only_kept_tokens():
    enc = build_encoder("tiny", img_size=IMG).eval()
    x = _images()
    keep = torch.tensor([[0, 3, 5, 9], [1, 2, 14, 15]])
    with torch.no_grad():
        out = enc.forward_masked(enc.embed_patches(x), keep)
        assert out.shape == (2, 1 + 4, enc.embed_dim)
        # scrambling the pixels of a dropped patch (patch 4 = row 1, col 0) changes nothing
        y = x.clone()
        y[:, :, 16:32, 0:16] = torch.randn(2, 3, 16, 16)
        torch.testing.assert_close(enc.forward_masked(enc.embed_patches(y), keep), out)
        # scrambling a kept one (patch 0) does
        y[:, :, 0:16, 0:16] = torch.randn(2, 3, 16, 16)
        assert not torch.allclose(enc.forward_masked(enc.embed_patches(y), keep), out)


def test_replace_tokens_substitute_patch_embeddings_before_position_and_gather():
    enc = build_encoder("tiny", img_size=IMG).eval()
    tokens = enc.embed_patches(_images())
    keep = torch.tensor([[0, 3, 5, 9], [1, 2, 14, 15]])
    replace_idx = torch.tensor([[3], [14]])
    new = torch.randn(2, 1, enc.embed_dim)
    manual = tokens.clone()
    manual[0, 3], manual[1, 14] = new[0, 0], new[1, 0]
    with torch.no_grad():
        torch.testing.assert_close(enc.forward_masked(tokens, keep, replace_idx, new), enc.forward_masked(manual, keep))
    with pytest.raises(ValueError, match="replace_tokens"):
        enc.forward_masked(tokens, keep, replace_idx, None)


def test_grad_checkpointing_gives_same_output_and_grads():
    torch.manual_seed(0)
    enc = build_encoder("tiny", img_size=IMG)
    x = _images()
    keep = torch.tensor([[0, 3, 5, 9], [1, 2, 14, 15]])

    def run():
        enc.zero_grad()
        out = enc.forward_masked(enc.embed_patches(x), keep)
        out.square().mean().backward()
        return out.detach(), enc.blocks[0].attn.qkv.weight.grad.clone()

    out_plain, grad_plain = run()
    enc.set_grad_checkpointing(True)
    out_ckpt, grad_ckpt = run()
    torch.testing.assert_close(out_ckpt, out_plain)
    torch.testing.assert_close(grad_ckpt, grad_plain)


def test_timm_api_helpers():
    enc = build_encoder("tiny", img_size=IMG)
    assert {"pos_embed", "cls_token"} <= enc.no_weight_decay()
    groups = group_parameters(enc, enc.group_matcher())
    assert sum(len(v) for v in groups.values()) == len(list(enc.named_parameters()))
    assert enc.blocks[0].attn.fused_attn  # SDPA


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="num_classes"):
        build_encoder("tiny", img_size=IMG, num_classes=10)
    with pytest.raises(ValueError, match="global_pool"):
        build_encoder("tiny", img_size=IMG, global_pool="map")
    with pytest.raises(ValueError, match="unknown encoder size"):
        build_encoder("gigantic")


def test_every_registered_size_is_a_timm_model_of_the_same_shape():
    """ViT-H/14 included: the registry's sizes create through timm by name (what eval and export do) with the
    same parameter names and shapes as pacofr's encoder (built on the meta device: no memory)."""
    from pacofr.models.sizes import ENCODER_SIZES

    for size, spec in ENCODER_SIZES.items():
        with torch.device("meta"):
            ours = build_encoder(size, img_size=224, patch_size=spec.timm_patch)
            ref = timm.create_model(timm_name(size), pretrained=False, num_classes=0)
        assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    with torch.device("meta"):
        huge = build_encoder("huge", img_size=224, patch_size=14)
    assert sum(p.numel() for p in huge.parameters()) / 1e6 > 600  # ViT-H/14: 632 M
