"""``pacofr fit`` end to end: the run folder (checkpoints by step, last.ckpt, resolved config,
run_info, TensorBoard scalars and images) and a 2-process CPU DDP run (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from config_files import DEMO, config_args
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parents[1]


def small_overrides(tmp_path: Path, root: Path, run_dir: Path, **trainer) -> Path:
    """A last --config that shrinks the demo to a few seconds on tiny shards."""
    cfg = {
        "run_dir": str(run_dir),
        "model": {"objective": {"init_args": {"num_codes": 32, "incubation_steps": 2}}, "warmup_steps": 2},
        "data": {"root": str(root), "image_size": 64, "batch_size": 4, "num_workers": 0, "shuffle_buffer": 8},
        "trainer": {
            "max_steps": 6,
            "val_check_interval": 3,
            "limit_val_batches": 1,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "callbacks": [
                {"class_path": "pacofr.callbacks.throughput.ThroughputMonitor", "init_args": {"log_every_n_steps": 2}},
                {"class_path": "pacofr.callbacks.tensorboard.PretrainImages", "init_args": {"every_n_steps": 3}},
                {"class_path": "pacofr.callbacks.tensorboard.ScalarLayout"},
            ],
            **trainer,
        },
        "checkpoint": {"every_n_train_steps": 3},
    }
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_pacofr(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "pacofr.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"pacofr {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def test_fit_writes_a_complete_run_folder(tmp_path, make_shards):
    root = make_shards(tmp_path / "faces", {"train": [20, 20], "val": [8]}, size=72)
    run_dir = tmp_path / "run"
    run_pacofr("fit", *config_args(DEMO), "--config", str(small_overrides(tmp_path, root, run_dir)))

    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and "step00000003.ckpt" in ckpts and "step00000006.ckpt" in ckpts, ckpts
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 6
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["data"]["root"] == str(root) and config["model"]["objective"]["init_args"]["encoder_size"] == "tiny"
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["pacofr_version"] and len(info["starts"]) == 1

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0, "scalars": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    for scalar in ("loss/total", "loss/rec", "loss/codebook", "loss/spatial", "codebook/perplexity",
                   "codebook/usage_fraction", "mask/ratio", "recon/psnr_db", "optim/grad_norm",
                   "optim/lr_main", "perf/images_per_s", "val/loss"):  # fmt: skip
        assert scalar in tags["scalars"], f"{scalar} missing from {sorted(tags['scalars'])}"
    assert any(t.startswith("images/") for t in tags["images"]) and "codebook/prototypes" in tags["images"]
    assert "codebook/usage" in tags["histograms"]
    mask_ratio = events.Scalars("mask/ratio")[-1].value
    assert abs(mask_ratio - 12 / 16) < 1e-6  # 64 px / 16 = 4 x 4 patches, round(16 x 0.75) = 12 masked
    # the HPARAMS tab: hyper-parameters are written as a plugin event
    assert (run_dir / "tb" / "hparams.yaml").is_file()
    plugins = _summary_plugins(run_dir / "tb")
    assert "custom_scalars" in plugins, "no CUSTOM SCALARS layout"
    # the HPARAMS row is a session in the tb/hparams sub-run, its metric the validation loss
    assert "hparams" in _summary_plugins(run_dir / "tb" / "hparams"), "no HPARAMS session"
    session = EventAccumulator(str(run_dir / "tb" / "hparams"))
    session.Reload()
    assert "hp/val_loss" in session.Tags()["scalars"]
    assert "hp/val_loss" in tags["scalars"]


def _summary_plugins(tb: Path) -> set[str]:
    """Names of the TensorBoard plugins that summaries in the event files belong to."""
    from tensorboard.backend.event_processing import event_file_loader

    names = set()
    for f in tb.glob("events.out.tfevents.*"):
        for ev in event_file_loader.EventFileLoader(str(f)).Load():
            names |= {v.metadata.plugin_data.plugin_name for v in ev.summary.value}
    return names


@pytest.mark.slow
def test_two_process_cpu_ddp(tmp_path, make_shards):
    """DDP over gloo with 2 CPU processes: trains to max_steps and checkpoints once."""
    root = make_shards(tmp_path / "faces", {"train": [20, 20, 10], "val": [8]}, size=72)
    run_dir = tmp_path / "run"
    overrides = small_overrides(tmp_path, root, run_dir, devices=2, strategy="ddp", max_steps=4, val_check_interval=2)
    proc = run_pacofr("fit", *config_args(DEMO), "--config", str(overrides))
    assert "distributed_backend=gloo" in proc.stderr + proc.stdout
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
