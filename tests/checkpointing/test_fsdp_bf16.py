"""The path cluster users run, emulated on CPU: FSDP on 2 processes over gloo with Lightning's ``bf16-mixed``
(bf16 autocast, and FSDP mixed precision with parameters, gradient reduction and buffers in bf16), through a
sharded save and ``--resume auto``. The modules an objective declares fp32 (PaCo-FR's codebook: its codes, pixel
head, Belief Predictor and buffers, which are written in place between steps) keep an fp32 policy of their own;
the affinity variant's EMA teacher is sharded like its student, so the EMA update meets matching shards."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_exact_resume import REPO, finish, start_fit, tiny_config

from pacofr.checkpointing.consolidate import load_sharded_checkpoint

FSDP = ("--config", str(REPO / "configs" / "trainer" / "fsdp_cpu.yaml"), "--trainer.precision", "bf16-mixed")
VARIANTS = {
    "grad_region": (),
    "ema_affinity": (
        "--model.objective.init_args.codebook_update=ema",
        "--model.objective.init_args.spatial_variant=affinity",
    ),
}


# CI runs the affinity variant (EMA teacher on shards, EMA codebook); the gradient codebook in bf16 under FSDP2 is
# CI's tests/checkpointing/test_fsdp2.py run, so here it is extended
@pytest.mark.slow  # per variant, 2 two-process trainings of a tiny model: ~1 min on 2 cores
@pytest.mark.parametrize("variant", [pytest.param("grad_region", marks=pytest.mark.extended), "ema_affinity"])
def test_fsdp_bf16_trains_saves_sharded_and_resumes(variant, tmp_path, make_shards):
    root = make_shards(tmp_path / "faces", {"train": [20, 20], "val": [8]}, size=72)
    configs = {variant: tiny_config(tmp_path, root, tmp_path / variant, variant)}
    first = {n: start_fit("--config", str(c), *FSDP, *VARIANTS[n], "--trainer.max_steps=4") for n, c in configs.items()}
    for name, proc in first.items():
        code, out = finish(proc)
        assert code == 0, f"{name}: {out[-4000:]}"
    second = {n: start_fit("--config", str(c), *FSDP, *VARIANTS[n], "--resume", "auto") for n, c in configs.items()}
    for name, proc in second.items():
        code, out = finish(proc)
        assert code == 0, f"{name}: {out[-4000:]}"
        assert "resum" in out.lower(), f"{name} did not resume: {out[-2000:]}"
        last = Path(tmp_path / name / "checkpoints" / "last.ckpt")
        assert last.is_dir(), "FSDP writes sharded checkpoints"
        ckpt = load_sharded_checkpoint(last)
        assert ckpt["global_step"] == 7
        state = ckpt["state_dict"]
        codebook = {k: v for k, v in state.items() if ".codebook." in k and v.is_floating_point()}
        assert codebook and all(v.dtype == torch.float32 for v in codebook.values()), "the codebook stays fp32"
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), name
        if name == "ema_affinity":
            teacher = {k: v for k, v in state.items() if ".teacher." in k}
            student = {k.replace(".teacher.", ".encoder."): v for k, v in teacher.items()}
            assert teacher and all(torch.isfinite(v).all() for v in teacher.values())
            # the teacher moved towards the student (EMA after incubation), and is not the student
            assert any(not torch.equal(v, state[k]) for k, v in student.items())
