"""The whole loss computation of a training step after incubation (model forward + every loss of the configured
objective: ``PretrainObjective.losses``, what ``compile: true`` compiles) traces as one graph:
``torch.compile(fullgraph=True)`` raises on any graph break. ``backend="eager"`` runs dynamo's tracing only (no
code generation), so this stays quick on CPU. tests/training/test_compile.py trains the compiled module."""

import pytest
import torch

from pacofr.losses.codebook import codebook_loss
from pacofr.objectives import MAE, PaCoFR, PretrainObjective
from pacofr.training.synthetic_batches import synthetic_batches

CORE = dict(encoder_size="tiny", img_size=32, patch_size=8, mask_ratio=0.75, decoder_depth=1, decoder_dim=32)
PACOFR = dict(
    num_codes=16,
    code_dim=8,
    codebook_options={"proto_hidden": 16, "belief_hidden": 16},
    spatial_weight=0.1,
    covered_weight=0.007,
    incubation_steps=0,
)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: PaCoFR(**CORE, **PACOFR), id="pacofr"),
        pytest.param(
            lambda: PaCoFR(**CORE, **{**PACOFR, "codebook_update": "ema", "candidate_mix": "hard"}),
            id="pacofr-ema-hard",
            marks=pytest.mark.slow,
        ),
        pytest.param(lambda: MAE(**CORE), id="mae", marks=pytest.mark.slow),
    ],
)
def test_losses_trace_without_graph_breaks(make):
    torch.manual_seed(0)
    objective: PretrainObjective = make().train()
    batch = synthetic_batches(objective, batch=2, count=1)[0]
    tensors = {k: batch[k] for k in objective.batch_keys + objective.optional_batch_keys}
    compiled = torch.compile(objective.losses, fullgraph=True, backend="eager")
    torch.manual_seed(1)
    total, terms, _ = compiled(tensors)
    torch.manual_seed(1)
    ref_total, ref_terms, _ = objective(batch, step=0)
    torch.testing.assert_close(total, ref_total)
    assert terms.keys() == ref_terms.keys()
    total.backward()  # the compiled graph is differentiable end to end
    assert objective.encoder.blocks[0].attn.qkv.weight.grad is not None


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
