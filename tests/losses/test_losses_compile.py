"""The whole loss computation of a training step after incubation (model forward + every loss of the configured
method: ``PaCoFRPretrain._main_losses``, what ``compile: true`` compiles) traces as one graph:
``torch.compile(fullgraph=True)`` raises on any graph break. ``backend="eager"`` runs dynamo's tracing only (no
code generation), so this stays quick on CPU. tests/modules/test_pretrain_compile.py trains the compiled module."""

import pytest
import torch

from pacofr.losses.codebook import codebook_loss
from pacofr.modules.pretrain import PaCoFRPretrain
from pacofr.modules.synthetic_batches import synthetic_batches

IMG = 32


def _module(**overrides) -> PaCoFRPretrain:
    torch.manual_seed(0)
    kwargs = dict(
        encoder_size="tiny",
        img_size=IMG,
        patch_size=8,
        decoder_depth=1,
        decoder_dim=32,
        num_codes=16,
        code_dim=8,
        codebook_options={"proto_hidden": 16, "belief_hidden": 16},
        spatial_weight=0.1,
        covered_weight=0.007,
    )
    return PaCoFRPretrain(**{**kwargs, **overrides})


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({}, id="pacofr"),
        pytest.param({"codebook_update": "ema", "candidate_mix": "hard"}, id="pacofr-ema-hard", marks=pytest.mark.slow),
        pytest.param({"use_codebook": False, "spatial_weight": 0.0}, id="mae", marks=pytest.mark.slow),
    ],
)
def test_compute_losses_traces_without_graph_breaks(overrides):
    module = _module(**overrides).train()
    batch = synthetic_batches(module, batch=2, count=1)[0]
    compiled = torch.compile(module._main_losses, fullgraph=True, backend="eager")
    torch.manual_seed(1)
    total, terms, _ = compiled(batch["image"], batch["mask"], batch["covered_patches"], batch["region_hist"])
    torch.manual_seed(1)
    ref_total, ref_terms, _ = module.compute_losses(batch)
    torch.testing.assert_close(total, ref_total)
    assert terms.keys() == ref_terms.keys()
    total.backward()  # the compiled graph is differentiable end to end
    assert module.model.encoder.blocks[0].attn.qkv.weight.grad is not None


def test_codebook_loss_traces_without_graph_breaks():
    outputs = {
        "belief_logits": torch.randn(2, 5, 16, requires_grad=True),
        "target_code": torch.randint(16, (2, 5)),
        "assigned_prototype": torch.randn(2, 5, 12, requires_grad=True),
        "prototype_target": torch.randn(2, 5, 12),
        "prototypes_detached": torch.randn(16, 12),
        "target": torch.randn(2, 5, 12),
    }
    weight = (torch.rand(2, 5) > 0.5).float()
    compiled = torch.compile(codebook_loss, fullgraph=True, backend="eager")
    got, ref = compiled(outputs, beta=0.25, weight=weight), codebook_loss(outputs, beta=0.25, weight=weight)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k])
