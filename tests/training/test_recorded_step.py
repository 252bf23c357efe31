"""The objective redesign changed no number: each method config's loss terms, gradients and post-step codebook
buffers on a fixed batch equal, bit for bit, what the module before the redesign computed.

``recorded_step_before.json`` was written by the pre-redesign ``PaCoFRPretrain`` (commit b9d9370, CPU, one
thread): each case is a pretraining config's ``model`` section shrunk to a tiny ViT at 32 px (64 px for the demo),
seeded with ``seed_everything(0)``, one batch of 4 random images with exact-count masks (seed 0), ``manual_seed(1)``
before the step, then ``loss.backward()`` and the codebook update. Tensors are compared by SHA-256 of their bytes,
floats by their hex form; names in the old layout (``model.encoder.*``) by their current names.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L
import pytest
import torch

from pacofr.checkpointing.legacy_keys import upgrade_name
from pacofr.objectives import FSFM, MAE, PaCoFR
from pacofr.training.module import PretrainModule

RECORD = json.loads((Path(__file__).parent / "recorded_step_before.json").read_text())
CORE = ("encoder_size", "img_size", "patch_size", "decoder_depth", "decoder_dim", "mask_ratio", "drop_path_rate")
CORE += ("grad_checkpointing",)
MODULE = ("base_lr", "min_lr_ratio", "weight_decay", "betas", "warmup_steps", "compile", "max_nonfinite_steps")
PACOFR = (
    "covered_weight", "num_codes", "code_dim", "codebook_update", "codebook_options", "replace_ratio",
    "num_candidates", "candidate_mix", "incubation_steps", "codebook_weight", "codebook_beta", "spatial_weight",
    "spatial_variant", "spatial_centroid_weight", "teacher_momentum",
)  # fmt: skip


def build(old: dict) -> PretrainModule:
    """The pre-redesign module's flat arguments as an objective (chosen by what used to be flags) + module."""
    core = {k: old[k] for k in CORE}
    if old["use_codebook"]:
        # the spatial loss as it was then (issue 13 made visible-only, summed, sided and prior-checked the default)
        before = dict(spatial_on="all", spatial_pairs="mean", spatial_sides=False, spatial_prior=False)
        objective = PaCoFR(**core, **{k: old[k] for k in PACOFR}, **before)
    else:
        assert old["spatial_weight"] == 0, "no method without a codebook had a spatial loss"
        if old["covered_weight"] > 0:  # FSFM without the ID branch (issue 13 added it)
            objective = FSFM(covered_weight=old["covered_weight"], id_weight=0.0, **core)
        else:
            objective = MAE(**core)
    return PretrainModule(objective, **{k: old[k] for k in MODULE})


def fixed_batch(num_patches: int, num_masked: int, img: int, b: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    order = torch.rand(b, num_patches, generator=g).argsort(1)
    mask = torch.zeros(b, num_patches, dtype=torch.bool).scatter_(1, order[:, :num_masked], True)
    covered = torch.zeros_like(mask).scatter_(1, order[:, :1], True)
    hist = torch.rand(b, num_patches, 9, generator=g).pow(4)
    return {
        "image": torch.randn(b, 3, img, img, generator=g),
        "mask": mask,
        "covered_patches": covered,
        "region_hist": hist / hist.sum(-1, keepdim=True),
        "covered": torch.zeros(b, dtype=torch.long),
    }


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()[:16]


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("case", sorted(RECORD))
def test_step_equals_the_pre_redesign_module(case: str, one_thread) -> None:
    rec = RECORD[case]
    L.seed_everything(0, verbose=False)
    module = build(rec["args"])
    objective = module.objective
    step = 0 if rec["phase"] == "incubation" else objective.incubation_steps
    assert objective.incubating(step) == (rec["phase"] == "incubation")
    batch = fixed_batch(objective.num_patches, objective.num_masked, rec["args"]["img_size"])
    torch.manual_seed(1)
    total, terms, out = objective(batch, step)
    total.backward()

    assert total.item().hex() == rec["total"]
    assert {k: v.item().hex() for k, v in terms.items()} == rec["terms"]
    grads = {n: digest(p.grad) for n, p in module.named_parameters() if p.grad is not None}
    assert grads == {upgrade_name(n): d for n, d in rec["grads"].items()}
    assert sorted(n for n, p in module.named_parameters() if p.grad is None) == sorted(
        upgrade_name(n) for n in rec["no_grad"]
    )
    # the codebook's honest usage monitor and re-seed count came later (issue 13): new buffers, nothing else
    added = {"objective.codebook.steps_since_hit", "objective.codebook.reseeded_total"}
    assert [k for k in module.state_dict() if k not in added] == [upgrade_name(k) for k in rec["state_keys"]]
    if "codebook_buffers" in rec:
        objective.after_step(objective.state_for_after_step(out), step)
        buffers = {n: digest(v) for n, v in objective.codebook.named_buffers() if n in rec["codebook_buffers"]}
        assert buffers == rec["codebook_buffers"]
