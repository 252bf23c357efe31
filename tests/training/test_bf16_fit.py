"""Every shipped pretraining run (size file + method file) trains in ``bf16-mixed`` (CPU autocast: the GPU runs'
numeric regime, emulated), writes its checkpoints and continues with ``--resume auto``: a real ``pacofr fit`` per
run (its compile setting included), shrunk to a tiny ViT. The losses stay finite and the objective's fp32 modules
keep fp32 parameters and buffers in the checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from config_files import RUNS, config_args, merged_yaml

from pacofr.cli import main

# CI fits the shipped recipe (codebook, incubation, spatial loss, compile); the other method configs run in
# `make test-extended` (the same code path with other objectives, whose steps test_recorded_step and the objective
# tests check)
IN_CI = {"pacofr_vit_b16"}
CONFIGS = [name if name in IN_CI else pytest.param(name, marks=pytest.mark.extended) for name in sorted(RUNS)]


def shrunk(config: str, tmp_path: Path, faces: Path, steps: int) -> Path:
    base = merged_yaml(RUNS[config])
    init = base["model"]["objective"].get("init_args", {})
    objective = {"encoder_size": "tiny", "decoder_depth": 1, "decoder_dim": 64}
    if "num_codes" in init:
        objective.update(num_codes=32, code_dim=32, incubation_steps=2)
        objective["codebook_options"] = {"proto_hidden": 32, "belief_hidden": 32, "dead_after": 2, "reseed_every": 2}
    if "id_hidden_dim" in init:
        objective.update(id_hidden_dim=64, id_proj_dim=32)
    # the online probe needs synthetic faces with pose and identity labels (pacofr-prep synth), not these shards
    callbacks = [c for c in base["trainer"].get("callbacks", []) if not c["class_path"].endswith("OnlineProbe")]
    overrides = {
        "run_dir": str(tmp_path / "run"),
        # the ViT-B configs compile the step: traced by dynamo and AOTAutograd as on a GPU, without inductor's C++
        # build (minutes on a loaded 2-core CPU; the GPU check script compiles with inductor)
        "model": {"objective": {"init_args": objective}, "warmup_steps": 2, "compile_backend": "aot_eager"},
        "data": {"root": str(faces), "image_size": 64, "batch_size": 4, "num_workers": 0, "shuffle_buffer": 8},
        "trainer": {
            "precision": "bf16-mixed", "max_steps": steps, "val_check_interval": 2, "limit_val_batches": 1,
            "log_every_n_steps": 1, "enable_progress_bar": False, "callbacks": callbacks,
        },
        "checkpoint": {"every_n_train_steps": 2},
    }  # fmt: skip
    path = tmp_path / f"small_{steps}.yaml"
    path.write_text(yaml.safe_dump(overrides))
    return path


@pytest.mark.slow  # one tiny fit and its resume per method config: ~2 min on 2 cores
@pytest.mark.parametrize("config", CONFIGS)
def test_method_config_trains_and_resumes_in_bf16(config, fit_faces, tmp_path):
    faces = fit_faces
    cfg = config_args(RUNS[config])
    assert main(["fit", *cfg, "--config", str(shrunk(config, tmp_path, faces, 4))]) == 0
    checkpoints = tmp_path / "run" / "checkpoints"
    assert torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 4
    args = ["fit", *cfg, "--config", str(shrunk(config, tmp_path, faces, 6)), "--resume", "auto"]
    assert main(args) == 0
    ckpt = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 6, "resumed at step 4 and ran to 6"
    state = ckpt["state_dict"]
    floats = {k: v for k, v in state.items() if v.is_floating_point()}
    assert all(v.dtype == torch.float32 for v in floats.values()), "parameters and buffers stay fp32 masters"
    assert all(torch.isfinite(v).all() for v in floats.values())
