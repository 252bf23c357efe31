"""The objective's float32 islands (``fp32_modules()``): autocast off inside them, and a copy of the objective
computes with its own parameters."""

from __future__ import annotations

import copy
import io

import torch
from tiny_training import tiny_objective

from pacofr.training.fp32_modules import keep_declared_fp32


def test_the_island_runs_in_float32_under_bf16_autocast():
    torch.manual_seed(0)
    objective = tiny_objective("pacofr", img_size=32, patch_size=8)
    assert keep_declared_fp32(objective) == ["codebook"]
    patches = torch.randn(2, objective.num_patches, objective.patch_dim)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = objective.codebook(patches.bfloat16())
        outside = objective.decoder.embed(torch.randn(2, 3, objective.encoder.embed_dim))
    assert out["belief_logits"].dtype == torch.float32 and outside.dtype == torch.bfloat16


def test_a_deep_copy_computes_with_its_own_parameters():
    """An EMA/SWA copy or a test's twin: the copy's island forward must use the copy's parameters (a closure over
    the original module would keep training the original)."""
    torch.manual_seed(0)
    original = tiny_objective("pacofr", img_size=32, patch_size=8)
    keep_declared_fp32(original)
    twin = copy.deepcopy(original)
    with torch.no_grad():
        twin.codebook.codes.add_(1.0)  # the twin's codes differ from the original's
    patches = torch.randn(2, original.num_patches, original.patch_dim)
    twin.codebook(patches)["belief_logits"].sum().backward()
    assert all(p.grad is None for p in original.codebook.parameters())
    assert any(p.grad is not None for p in twin.codebook.parameters())
    assert not torch.equal(original.codebook.prototypes(), twin.codebook.prototypes())
    assert torch.equal(twin.codebook(patches)["prototypes_detached"], twin.codebook.prototypes().detach())


def test_the_objective_pickles_with_its_islands():
    objective = tiny_objective("pacofr", img_size=32, patch_size=8)
    keep_declared_fp32(objective)
    buffer = io.BytesIO()
    torch.save(objective, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)
    assert restored.codebook.forward.module is restored.codebook
