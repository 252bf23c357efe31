"""The study's control objectives (docs/study.md): MAE + a class-share head, full-sequence MAE, the full arm's
input controls (random codes, low-pass view, mask token) and the rolled region targets."""

import pytest
import torch

from pacofr.objectives import MAE, MAEFull, MAEParse, PaCoFR
from pacofr.objectives.paco_fr_full import PaCoFRFull
from pacofr.objectives.region_terms import region_targets

IMG = 64
CORE = dict(encoder_size="tiny", img_size=IMG, patch_size=16, decoder_depth=1, decoder_dim=64)
CB = dict(num_codes=64, code_dim=16, codebook_options={"proto_hidden": 32, "belief_hidden": 32}, incubation_steps=0)


def batch(b: int = 4, masked: int = 12, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    order = torch.rand(b, 16, generator=g).argsort(1)
    mask = torch.zeros(b, 16, dtype=torch.bool).scatter_(1, order[:, :masked], True)
    hist = torch.rand(b, 16, 9, generator=g).pow(4)
    return {"image": torch.randn(b, 3, IMG, IMG, generator=g), "mask": mask, "region_hist": hist / hist.sum(-1, True)}


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_mae_parse_is_mae_plus_the_class_share_term():
    """Same init and batch: MAE's reconstruction term is unchanged, the total adds lambda x the region term, and
    with centroid weight 0 the geometry term does not count (but is logged)."""
    b = batch()
    torch.manual_seed(0)
    mae = MAE(**CORE, mask_ratio=0.75)
    torch.manual_seed(0)
    parse = MAEParse(**CORE, mask_ratio=0.75, spatial_weight=0.1, spatial_centroid_weight=0.0)
    total_mae, terms_mae, _ = mae(b)
    total, terms, _ = parse(b)
    assert torch.equal(terms["rec"], terms_mae["rec"])
    assert torch.allclose(total, total_mae + 0.1 * terms["spatial_region"], rtol=1e-6)
    assert terms["spatial_centroid"] > 0 and torch.equal(terms["spatial"], terms["spatial_region"])
    spatial = MAEParse(**CORE, mask_ratio=0.75, spatial_centroid_weight=1.0)
    _, terms_sp, _ = spatial(b)
    assert torch.allclose(terms_sp["spatial"], terms_sp["spatial_region"] + terms_sp["spatial_centroid"])


def test_mae_parse_trains_the_encoder_from_the_labels_and_refuses_no_labels():
    parse = MAEParse(**CORE, mask_ratio=0.75)
    total, _, _ = parse(batch())
    total.backward()
    g = grads(parse)
    assert g["spatial_head.proj.weight"].abs().sum() > 0 and g["encoder.blocks.0.attn.qkv.weight"].abs().sum() > 0
    assert g["position_prior"].abs().sum() > 0
    assert parse.parameter_group("probe").names == {"position_prior"} and "position_prior" in parse.no_weight_decay()
    no_labels = {k: v for k, v in batch().items() if k != "region_hist"}
    with pytest.raises(KeyError, match="region_hist"):
        parse(no_labels)
    with pytest.raises(ValueError, match="spatial_weight"):
        MAEParse(**CORE, spatial_weight=0.0)


def test_rolled_region_targets_cut_the_image_link():
    hist = batch()["region_hist"]
    assert torch.equal(region_targets(hist, "own"), hist)
    rolled = region_targets(hist, "rolled")
    assert torch.equal(rolled[1:], hist[:-1]) and torch.equal(rolled[0], hist[-1])
    b = batch()
    torch.manual_seed(0)
    own = PaCoFR(**CORE, **CB, mask_ratio=0.75, covered_weight=0.0)
    torch.manual_seed(0)
    shuffled = PaCoFR(**CORE, **CB, mask_ratio=0.75, covered_weight=0.0, spatial_targets="rolled")
    torch.manual_seed(1)
    _, t_own, _ = own(b)
    torch.manual_seed(1)
    _, t_rolled, _ = shuffled(b)
    assert torch.equal(t_own["rec"], t_rolled["rec"])  # the same step but for the spatial targets
    assert not torch.equal(t_own["spatial_region"], t_rolled["spatial_region"])
    with pytest.raises(ValueError, match="spatial_targets"):
        PaCoFR(**CORE, **CB, spatial_targets="shuffled")


def test_full_sequence_mae_encodes_every_patch_with_mask_tokens():
    model = MAEFull(**CORE, mask_ratio=0.5)
    b = batch(masked=8)
    seen = []
    model.encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    total, terms, out = model(b)
    assert seen == [1 + 16] and out["pred"].shape == (4, 16, 768)
    assert torch.equal(out["loss_mask"], b["mask"])
    total.backward()
    assert model.mask_token.grad.abs().sum() > 0 and model.decoder.mask_token.grad is None
    # the masked patches' pixels do not reach the encoder: changing them changes no visible patch's token
    b2 = dict(b, image=b["image"].clone())
    patch = b["mask"][0].nonzero()[0].item()
    r, c = divmod(patch, 4)
    b2["image"][0, :, r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16] += 5.0
    torch.manual_seed(0)
    e1 = model.forward_model(b["image"], b["mask"])["encoded"]
    e2 = model.forward_model(b2["image"], b2["mask"])["encoded"]
    assert torch.equal(e1[0], e2[0])
    assert model.encoder_tokens() == 16


def full(**kw) -> PaCoFRFull:
    return PaCoFRFull(**CORE, **CB, mask_ratio=0.5, covered_weight=0.0, **kw)


def test_full_arm_controls_substitute_what_they_say():
    b = batch(masked=8)
    torch.manual_seed(0)
    model = full()
    state = model.state_dict()
    out = {}
    for sub in ("candidates", "random_codes", "lowpass"):
        m = full(substitute=sub)
        m.load_state_dict(state)
        torch.manual_seed(3)
        out[sub] = m.forward_model(b["image"], b["mask"])
        if sub != "lowpass":
            assert out[sub]["candidate_codes"].shape == (4, 8, 4)
    # the same belief weights, other codes
    assert torch.equal(out["random_codes"]["candidate_weights"], out["candidates"]["candidate_weights"])
    assert not torch.equal(out["random_codes"]["candidate_codes"], out["candidates"]["candidate_codes"])
    assert "candidate_codes" not in out["lowpass"]
    # all three predict every patch from different encoder inputs
    assert not torch.allclose(out["lowpass"]["pred"], out["candidates"]["pred"])


def test_lowpass_tokens_see_only_the_pooled_patch():
    torch.manual_seed(0)
    model = full(substitute="lowpass")
    images = torch.randn(1, 3, IMG, IMG)
    pooled = torch.nn.functional.avg_pool2d(images, 4).repeat_interleave(4, 2).repeat_interleave(4, 3)
    idx = torch.tensor([[0, 5]])
    want = model.encoder.embed_patches(pooled).gather(1, idx.unsqueeze(-1).expand(-1, -1, 192))
    assert torch.allclose(model.lowpass_tokens(images, idx), want, atol=1e-6)
    detail = images + (torch.randn_like(images) - pooled.new_zeros(1))  # any change within each 4x4 cell ...
    detail = detail - torch.nn.functional.avg_pool2d(detail - images, 4).repeat_interleave(4, 2).repeat_interleave(4, 3)
    assert torch.allclose(model.lowpass_tokens(detail, idx), want, atol=1e-5)  # ... that keeps its mean is unseen
    with pytest.raises(ValueError, match="lowpass_factor"):
        full(substitute="lowpass", lowpass_factor=3)
    with pytest.raises(ValueError, match="substitute"):
        full(substitute="copy")


def test_mask_token_share_one_keeps_the_codebook_out_of_the_encoder():
    b = batch(masked=8)
    model = full(mask_token_share=1.0)
    total, _, out = model(b)
    assert model.num_replaced == 0 and not out["replaced"].any()
    total.backward()
    assert model.codebook.token_proj.weight.grad is None or model.codebook.token_proj.weight.grad.abs().sum() == 0
