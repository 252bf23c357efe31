"""FSFM's ID branch as in its reference (wolo-wolo/FSFM-CVPR25, fsvfm/models_fsfm.py and fsfm-3c/pretrain/*):
the target is an EMA of encoder + representation decoder (with its ``pred`` map) + projector, the feature is the
mean over every representation-decoder token (class token included), the heads are Linear-LayerNorm-ReLU-Linear,
the loss is SimSiam's ``-cos / 2`` (default) or BYOL's ``2 - 2 cos``, one direction, no gradient into the target."""

from __future__ import annotations

import math

import pytest
import torch
from config_files import RUNS, merged_yaml
from torch import nn

from pacofr.objectives import FSFM
from pacofr.objectives.fsfm import RepresentationDecoder, byol_loss, simsiam_loss

IMG = 64  # 4 x 4 patches of 16 px
SMALL = dict(encoder_size="tiny", img_size=IMG, patch_size=16, decoder_depth=1, decoder_dim=64)
CONFIG = RUNS["fsfm_vit_b16"]  # configs/pretrain/vit_b16.yaml + method/fsfm.yaml


def fsfm(seed: int = 0, **kwargs) -> FSFM:
    torch.manual_seed(seed)
    return FSFM(**{**SMALL, "id_hidden_dim": 64, "id_proj_dim": 32, **kwargs})


def batch(model: FSFM, b: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    order = torch.rand(b, model.num_patches, generator=g).argsort(1)
    mask = torch.zeros(b, model.num_patches, dtype=torch.bool).scatter_(1, order[:, : model.num_masked], True)
    covered = torch.zeros_like(mask).scatter_(1, order[:, :2], True)
    return {"image": torch.randn(b, 3, IMG, IMG, generator=g), "mask": mask, "covered_patches": covered}


def test_target_is_an_ema_copy_of_encoder_rep_decoder_and_projector():
    model = fsfm()
    assert model.momentum_pairs() == (
        ("encoder", "target_encoder"),
        ("rep_decoder", "target_rep_decoder"),
        ("projector", "target_projector"),
    )
    assert isinstance(model.target_rep_decoder, RepresentationDecoder)
    assert model.target_rep_decoder.pred.out_features == model.encoder.embed_dim  # FSFM's rep_decoder_pred
    for online, target in model.momentum_pairs():
        on, tg = getattr(model, online).state_dict(), getattr(model, target).state_dict()
        assert on.keys() == tg.keys()
        assert all(torch.equal(on[k], tg[k]) for k in on), f"{target} starts as a copy of {online}"
        assert not any(p.requires_grad for p in getattr(model, target).parameters())
    assert not hasattr(model, "target_predictor"), "the predictor is online only"
    trained = {n for g in model.named_param_groups(0.05) for n in g["names"]}
    assert not any(n.startswith("target_") for n in trained)
    assert {"rep_decoder.pred.weight", "projector.0.weight", "predictor.3.weight"} <= trained
    assert {"rep_decoder.mask_token", "rep_decoder.pos_embed"} <= model.no_weight_decay()


@pytest.mark.parametrize("step", [0, 7])
def test_ema_follows_the_online_parts_by_the_momentum(step):
    model = fsfm()
    model.configure_run(total_steps=10, samples_per_epoch=None, global_batch=4)
    with torch.no_grad():
        for online, _ in model.momentum_pairs():
            for p in getattr(model, online).parameters():
                p.add_(torch.randn_like(p))
    before = {t: {n: p.clone() for n, p in getattr(model, t).named_parameters()} for _, t in model.momentum_pairs()}
    m = model.momentum(step)
    assert m == pytest.approx(1 - 0.004 * (math.cos(math.pi * step / 10) + 1) / 2)
    model.after_step(None, step)
    for online, target in model.momentum_pairs():
        named_target = dict(getattr(model, target).named_parameters())
        for name, s in getattr(model, online).named_parameters():
            want = m * before[target][name] + (1 - m) * s
            torch.testing.assert_close(named_target[name], want, msg=f"{target}.{name}")
    assert not torch.equal(model.target_rep_decoder.pred.weight, before["target_rep_decoder"]["pred.weight"])

    # a skipped step (apply = 0 on the device) leaves every target where it was
    now = {n: p.clone() for n, p in model.named_parameters() if n.startswith("target_")}
    model.after_step(None, step + 1, apply=torch.zeros(()))
    assert all(torch.equal(p, now[n]) for n, p in model.named_parameters() if n.startswith("target_"))


def test_features_are_the_mean_over_every_rep_decoder_token_class_token_included():
    model = fsfm().eval()
    data = batch(model)
    images = data["image"]
    out = model.forward_model(images, data["mask"])
    tokens = model.rep_decoder(out["encoded"], out["keep_idx"])
    assert tokens.shape == (4, 1 + model.num_patches, model.encoder.embed_dim)
    torch.testing.assert_close(model.online_feature(out), model.predictor(model.projector(tokens.mean(1))))
    with torch.no_grad():
        full = model.target_encoder.forward_masked(model.target_encoder.embed_patches(images))
        assert full.shape[1] == 1 + model.num_patches, "the target sees the whole, unmasked image"
        want = model.target_projector(model.target_rep_decoder(full).mean(1))
        torch.testing.assert_close(model.target_feature(images), want)
        # the target branch reads the target modules only: moving the online rep decoder leaves it unchanged,
        # moving the target's rep_decoder_pred moves it
        model.rep_decoder.pred.bias.add_(1.0)
        torch.testing.assert_close(model.target_feature(images), want)
        model.target_rep_decoder.pred.bias.add_(1.0)
        assert not torch.allclose(model.target_feature(images), want)


def test_mask_tokens_fill_the_hidden_positions_of_the_online_view():
    model = fsfm().eval()
    data = batch(model)
    out = model.forward_model(data["image"], data["mask"])
    with torch.no_grad():
        before = model.rep_decoder(out["encoded"], out["keep_idx"])
        model.rep_decoder.mask_token.add_(1.0)
        after = model.rep_decoder(out["encoded"], out["keep_idx"])
    assert not torch.allclose(before, after)
    with torch.no_grad():  # without keep_idx (the target's full view) there is no mask token
        full = model.encoder.forward_masked(model.encoder.embed_patches(data["image"]))
        a = model.rep_decoder(full)
        model.rep_decoder.mask_token.add_(1.0)
        torch.testing.assert_close(model.rep_decoder(full), a)


@pytest.mark.parametrize("hidden", [48, 96])
def test_heads_are_linear_layernorm_relu_linear(hidden):
    model = fsfm(id_hidden_dim=hidden, id_proj_dim=24)
    d = model.encoder.embed_dim
    for head, (i, o) in ((model.projector, (d, 24)), (model.predictor, (24, 24))):
        assert [type(m) for m in head] == [nn.Linear, nn.LayerNorm, nn.ReLU, nn.Linear]
        assert (head[0].in_features, head[0].out_features) == (i, hidden)
        assert head[1].normalized_shape == (hidden,)
        assert (head[3].in_features, head[3].out_features) == (hidden, o)
        assert torch.equal(head[0].bias, torch.zeros(hidden)) and torch.equal(head[1].weight, torch.ones(hidden))


def test_rep_decoder_width_and_heads_follow_the_reference_defaults():
    model = fsfm()
    rd = model.rep_decoder
    assert rd.depth == 2 and rd.decoder_dim == model.encoder.embed_dim
    assert rd.blocks[0].attn.num_heads == 16  # FSFM: rep_decoder_num_heads=16 at every size
    assert rd.embed.in_features == model.encoder.embed_dim
    narrower = fsfm(id_decoder_dim=64, id_decoder_heads=4, id_decoder_depth=1)
    assert narrower.rep_decoder.decoder_dim == 64 and narrower.rep_decoder.pred.out_features == 192
    assert narrower.rep_decoder.blocks[0].attn.num_heads == 4 and narrower.rep_decoder.depth == 1


def test_simsiam_and_byol_losses():
    torch.manual_seed(0)
    p, z = torch.randn(6, 8, requires_grad=True), torch.randn(6, 8, requires_grad=True)
    cos = nn.functional.cosine_similarity(p, z, dim=-1)
    torch.testing.assert_close(simsiam_loss(p, z), -0.5 * cos.mean())
    torch.testing.assert_close(byol_loss(p, z), (2 - 2 * cos).mean())
    torch.testing.assert_close(simsiam_loss(p * 3, z), simsiam_loss(p, z))  # on the normalised vectors
    assert simsiam_loss(p, p.detach()).item() == pytest.approx(-0.5)
    assert byol_loss(p, p.detach()).item() == pytest.approx(0.0, abs=1e-6)
    # one direction, stop-gradient on the target (FSFM computes it under no_grad)
    simsiam_loss(p, z).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0 and z.grad is None


def test_id_loss_option_picks_the_term():
    data = batch(fsfm())
    terms = {}
    for kind in ("simsiam", "byol"):
        model = fsfm(id_loss=kind)  # same seed: same weights
        total, t, _ = model(data)
        terms[kind] = t["id"]
        torch.testing.assert_close(total, t["rec"] + 0.007 * t["rec_covered"] + 0.1 * t["id"])
    torch.testing.assert_close(terms["byol"], 4 * terms["simsiam"] + 2)
    assert fsfm().id_loss == "simsiam", "FSFM-3C's default (--cl_loss SimSiam)"
    with pytest.raises(ValueError, match="id_loss"):
        fsfm(id_loss="infonce")


def test_gradients_reach_the_online_parts_and_never_the_target():
    model = fsfm()
    total, terms, _ = model(batch(model))
    total.backward()
    for name in ("rep_decoder.pred.weight", "rep_decoder.blocks.0.attn.qkv.weight", "rep_decoder.mask_token"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    for head in (model.projector, model.predictor):
        assert head[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("target_"))


def test_id_weight_zero_is_the_mim_part_alone():
    model = fsfm(id_weight=0.0)
    assert model.momentum_pairs() == ()
    assert {n.split(".")[0] for n, _ in model.named_parameters()} == {"encoder", "decoder"}
    total, terms, _ = model(batch(model))
    assert set(terms) == {"rec", "rec_covered"}
    model.after_step(None, 0)  # nothing to update
    with_id = fsfm()
    assert model.flops_per_image() == super(FSFM, model).flops_per_image()
    extra = with_id.flops_per_image() - model.flops_per_image()
    n, d = with_id.num_patches + 1, with_id.encoder.embed_dim
    target_encoder = 12 * (2 * 12 * d * d * n + 4 * n * n * d)  # ViT-Ti: 12 blocks, forward only
    assert extra > target_encoder
    deeper = fsfm(id_decoder_depth=4)
    assert deeper.flops_per_image() > with_id.flops_per_image() > model.flops_per_image()


def test_a_tiny_run_keeps_the_loss_finite_and_the_target_trailing():
    model = fsfm()
    model.configure_run(total_steps=4, samples_per_epoch=None, global_batch=4)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    start = model.target_rep_decoder.pred.weight.detach().clone()
    for step in range(4):
        total, terms, out = model(batch(model, seed=step), step)
        assert all(math.isfinite(float(v.detach())) for v in (total, *terms.values()))
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
        model.after_step(None, step)
    target, online = model.target_rep_decoder.pred.weight, model.rep_decoder.pred.weight
    assert not torch.equal(target, start) and not torch.allclose(target, online)


def test_the_fsfm_config_follows_the_reference():
    config = merged_yaml(CONFIG)
    args = config["model"]["objective"]["init_args"]
    assert args["id_loss"] == "simsiam" and args["id_weight"] == 0.1 and args["covered_weight"] == 0.007
    assert (args["id_hidden_dim"], args["id_proj_dim"], args["id_decoder_depth"]) == (4096, 256, 2)
    assert args["id_decoder_heads"] == 16 and args["id_momentum"] == 0.996
    assert config["trainer"]["gradient_clip_val"] == 1.0
    # from the size file (its header names the reference for each): fsfm_vit_base_patch16_dec512d8b, MAE's recipe
    assert (args["encoder_size"], args["decoder_depth"], args["decoder_dim"]) == ("base", 8, 512)
    model = config["model"]
    assert (model["base_lr"], model["min_lr_ratio"], model["weight_decay"]) == (1.5e-4, 0.0, 0.05)
