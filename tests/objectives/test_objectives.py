"""The objectives' model forward: shapes, replaced patches, mask handling, FLOP count, compile-friendliness."""

import pytest
import torch

from pacofr.objectives import MAE, PaCoFR
from pacofr.objectives.masked_autoencoder import visible_indices

IMG = 64
CB = dict(num_codes=64, code_dim=16, codebook_options={"proto_hidden": 32, "belief_hidden": 32}, spatial_weight=0.0)


def paco(img_size: int = IMG, update: str = "grad", **kwargs) -> PaCoFR:
    return PaCoFR(encoder_size="tiny", img_size=img_size, codebook_update=update, **{**CB, **kwargs})


def _mask(b, n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=g) < k for _ in range(b)])


def test_visible_indices_are_the_unmasked_patches_in_order():
    mask = torch.tensor([[True, False, True, False], [False, False, True, True]])
    assert visible_indices(mask, 2).tolist() == [[1, 3], [0, 1]]


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_mae_config_shapes_and_no_replacement(size):
    model = MAE(encoder_size=size, img_size=IMG)
    mask = _mask(3, 16, model.num_masked)
    out = model.forward_model(torch.randn(3, 3, IMG, IMG), mask)
    assert not hasattr(model, "codebook")
    assert out["pred"].shape == out["target"].shape == (3, 16, 768)
    assert out["decoder_tokens"].shape == (3, 16, model.decoder.decoder_dim)
    assert "replaced" not in out
    assert torch.equal(out["loss_mask"], mask)
    assert "belief_logits" not in out


@pytest.mark.parametrize("mix", ["soft", "hard", "gumbel"])
@pytest.mark.parametrize("update", ["grad", "ema"])
def test_pacofr_config_shapes_and_replaced_patches(mix, update):
    model = paco(mask_ratio=0.5, replace_ratio=0.25, candidate_mix=mix, update=update)
    assert (model.num_masked, model.num_visible, model.num_replaced) == (8, 8, 2)
    mask = _mask(4, 16, 8)
    out = model.forward_model(torch.randn(4, 3, IMG, IMG), mask)
    assert out["pred"].shape == (4, 16, 768) and out["keep_idx"].shape == (4, 8)
    assert out["belief_logits"].shape == (4, 16, 64) and out["target_code"].shape == (4, 16)
    assert out["candidate_weights"].shape == out["candidate_codes"].shape == (4, 2, 4)
    replaced = out["replaced"]
    assert replaced.sum(1).eq(2).all()
    assert not (replaced & mask).any()  # replaced patches are visible ones
    assert torch.equal(out["loss_mask"], mask | replaced)
    assert out["code_perplexity"].ndim == 0 and 1.0 <= out["code_perplexity"].item() <= 64
    # the reconstruction loss reaches the encoder, the decoder and, through the mixture, the belief predictor
    ((out["pred"] - out["target"]).square().mean(-1) * out["loss_mask"]).sum().backward()
    assert model.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.codebook.token_proj.weight.grad.abs().sum() > 0
    assert model.codebook.belief.fc1.weight.grad.abs().sum() > 0
    model.after_step(model.state_for_after_step(out), step=0)
    assert model.codebook.recent_count.item() > 0


def test_replaced_tokens_reach_the_encoder():
    torch.manual_seed(0)
    model = paco(mask_ratio=0.5, replace_ratio=0.25).eval()
    images, mask = torch.randn(2, 3, IMG, IMG), _mask(2, 16, 8)
    torch.manual_seed(1)
    out = model.forward_model(images, mask)
    model.replace_ratio, model.num_replaced = 0.0, 0
    torch.manual_seed(1)
    plain = model.forward_model(images, mask)
    assert not torch.allclose(out["pred"], plain["pred"])
    assert not plain["replaced"].any()


def test_mask_with_wrong_count_is_refused():
    model = MAE(encoder_size="tiny", img_size=IMG)
    with pytest.raises(RuntimeError, match="num_masked"):
        model.forward_model(torch.randn(2, 3, IMG, IMG), _mask(2, 16, model.num_masked - 1))
    with pytest.raises(ValueError, match="mask must be"):
        model.forward_model(torch.randn(2, 3, IMG, IMG), torch.zeros(2, 15, dtype=torch.bool))


def _reference_step_flops(img=224, patch=16, dim=768, depth=12, ddim=512, ddepth=8, ratio=0.75):
    """MAE's analytic training FLOPs of one image (matmuls only, forward + backward = 3x forward), written out."""
    n = (img // patch) ** 2
    te = int(n * (1 - ratio)) + 1
    td = n + 1
    enc = depth * (24 * dim * dim * te + 4 * te * te * dim)
    dec = ddepth * (24 * ddim * ddim * td + 4 * td * td * ddim)
    emb = 2 * n * (patch * patch * 3) * dim
    head = 2 * n * ddim * (patch * patch * 3) + 2 * te * dim * ddim
    return 3 * (enc + dec + emb + head)


def test_flops_per_image_matches_reference_mae_base():
    with torch.device("meta"):
        model = MAE(encoder_size="base")
    flops = model.flops_per_image()
    assert flops == _reference_step_flops()
    assert flops / 1e9 == pytest.approx(58.7, abs=0.05)


def test_flops_per_image_of_codebook_model_adds_codebook_work():
    with torch.device("meta"):
        mae = MAE(encoder_size="base")
        paco = PaCoFR(encoder_size="base", spatial_weight=0.0)
    cb = paco.codebook
    n, k, p = 196, 1024, 768
    extra = (
        2 * n * (p * 512 + 512 * k) * 3  # belief MLP, trained
        + 2 * n * k * p  # alignment distances, no backward
        + 2 * n * k * p * 2  # belief commitment
        + 2 * paco.num_replaced * 4 * 768 * 3  # candidate mixture
        + 3 * 2 * k * (256 * 512 + 512 * p + 256 * 768) / 256  # g(C), W C once per batch of 256
    )
    assert paco.num_replaced == 7
    assert cb.flops_per_image(n, 7, 256) == pytest.approx(extra)
    assert paco.flops_per_image() == pytest.approx(mae.flops_per_image() + extra)


def test_no_weight_decay_and_incubation_names():
    model = paco()
    names = dict(model.named_parameters())
    assert all(n in names for n in model.no_weight_decay())
    assert {"encoder.pos_embed", "decoder.mask_token", "codebook.codes"} <= model.no_weight_decay()
    inc = model.parameter_group("codebook").names
    assert inc and all(n.startswith(("codebook.codes", "codebook.proto_head.", "codebook.belief.")) for n in inc)


@pytest.mark.slow
def test_forward_backward_compiles_without_graph_breaks():
    torch.manual_seed(0)
    model = paco(img_size=32, decoder_depth=1, mask_ratio=0.5, replace_ratio=0.5)
    model.encoder.blocks = model.encoder.blocks[:1]
    # aot_eager traces forward and backward exactly like inductor (graph breaks included) without the C++ build
    compiled = torch.compile(model.forward_model, fullgraph=True, dynamic=False, backend="aot_eager")
    images, mask = torch.randn(2, 3, 32, 32), _mask(2, 4, 2)
    out = compiled(images, mask)
    loss = ((out["pred"] - out["target"]).square().mean(-1) * out["loss_mask"]).sum() + out["belief_logits"].mean()
    loss.backward()
    assert model.encoder.blocks[0].attn.qkv.weight.grad is not None
    model.after_step(model.state_for_after_step(out), step=0)


@pytest.mark.parametrize("update", ["grad", "ema"])
def test_bf16_autocast_forward_backward(update):
    torch.manual_seed(0)
    model = paco(img_size=32, mask_ratio=0.5, replace_ratio=0.5, update=update)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.forward_model(torch.randn(2, 3, 32, 32), _mask(2, 4, 2))
    assert out["target"].dtype == torch.float32  # targets stay exact
    assert out["pred"].dtype == torch.bfloat16
    loss = ((out["pred"].float() - out["target"]).square().mean(-1) * out["loss_mask"]).sum()
    loss.backward()
    assert torch.isfinite(model.codebook.token_proj.weight.grad).all()


@pytest.mark.parametrize("share", [0.0, 0.5])
def test_full_sequence_arm_replaces_the_masked_patches_and_encodes_all(share):
    from pacofr.objectives import PaCoFRFull

    torch.manual_seed(0)
    model = PaCoFRFull(encoder_size="tiny", img_size=IMG, mask_ratio=0.5, mask_token_share=share, **CB)
    assert (model.num_masked, model.num_mask_tokens, model.num_replaced) == (
        8,
        int(round(8 * share)),
        8 - int(round(8 * share)),
    )
    assert model.encoder_tokens() == 16
    mask = _mask(2, 16, 8)
    seen = []
    model.encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    out = model.forward_model(torch.randn(2, 3, IMG, IMG), mask)
    assert seen[0][1] == 1 + 16, "the encoder sees every patch (and the class token)"
    assert torch.equal(out["loss_mask"], mask)
    assert (out["replaced"] & ~mask).sum() == 0 and out["replaced"].sum(1).eq(model.num_replaced).all()
    total, terms, _ = model({"image": torch.randn(2, 3, IMG, IMG), "mask": mask}, step=10**6)
    total.backward()
    assert model.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert (model.mask_token is not None and model.mask_token.grad.abs().sum() > 0) == (share > 0)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad), "no trained parameter idles (DDP)"
    if share < 1:
        assert model.codebook.token_proj.weight.grad.abs().sum() > 0  # the mixes reach the encoder


def test_full_sequence_arm_costs_more_encoder_work_than_the_hybrid():
    from pacofr.objectives import PaCoFRFull

    with torch.device("meta"):
        hybrid = PaCoFR(encoder_size="base", mask_ratio=0.5, spatial_weight=0.0)
        full = PaCoFRFull(encoder_size="base", mask_ratio=0.5, spatial_weight=0.0)
    assert full.flops_per_image() > 1.5 * hybrid.flops_per_image()


def test_construction_finishes_once_after_the_outermost_init():
    """``finish_init`` runs by itself, once, when every part exists (no subclass calls it)."""
    from pacofr.objectives import MAE
    from pacofr.objectives.paco_fr_full import PaCoFRFull

    calls = []

    class Counting(MAE):
        def __init__(self, **core):
            super().__init__(**core)
            self.extra = torch.nn.Linear(3, 3)  # built after MAE's own __init__ returned

        def finish_init(self):
            calls.append(sorted(n for n, _ in self.named_parameters() if n.startswith("extra")))
            super().finish_init()

    model = Counting(encoder_size="tiny", decoder_depth=1, decoder_dim=32, img_size=32, patch_size=16)
    assert calls == [["extra.bias", "extra.weight"]]  # once, with the subclass's parts in place
    assert {"extra.weight", "extra.bias"} <= set(model._param_ndim)
    full = PaCoFRFull(
        encoder_size="tiny", decoder_depth=1, decoder_dim=32, img_size=32, patch_size=16, num_codes=8, code_dim=8
    )
    assert set(full._param_ndim) == {n for n, _ in full.named_parameters()}  # the full arm's own parts counted


def test_the_affinity_teacher_follows_the_encoder_only_after_incubation_and_when_the_step_was_taken():
    model = paco(spatial_weight=0.1, spatial_variant="affinity", incubation_steps=2, teacher_momentum=0.9)
    assert model.momentum_pairs() == (("encoder", "teacher"),)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)  # the student moved; the teacher is still the initial copy
    before = [t.clone() for t in model.teacher.parameters()]
    model.after_step(None, step=1)  # incubating: no teacher update
    assert all(torch.equal(a, b) for a, b in zip(before, model.teacher.parameters()))
    model.after_step(None, step=2, apply=torch.tensor(0.0))  # a skipped step: gated off
    assert all(torch.equal(a, b) for a, b in zip(before, model.teacher.parameters()))
    model.after_step(None, step=2)
    for old, new, student in zip(before, model.teacher.parameters(), model.encoder.parameters()):
        torch.testing.assert_close(new, old + 0.1 * (student - old))


def test_the_core_alone_is_refused_with_one_line():
    """A size file without a method file names the MAE core, which defines no loss: refused when built."""
    from pacofr.errors import UserError
    from pacofr.objectives import MaskedAutoencoder

    with pytest.raises(UserError, match="defines no loss: it is a core, not a method"):
        MaskedAutoencoder(encoder_size="tiny", img_size=32, patch_size=8, decoder_depth=1, decoder_dim=32)
