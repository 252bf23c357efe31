"""Exact continuation outside SLURM: a tiny CPU run stopped at step k by the real preemption path (a signal,
agreement at the step boundary, ``preempt.ckpt``, exit 76) and resumed with ``--resume auto`` ends with the
same weights, bit for bit, as the uninterrupted run; and the pieces that make it so (RNG state round trip)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from config_files import DEMO, config_args
from jsonargparse import Namespace

from pacofr.checkpointing.preemption import EXIT_PREEMPTED
from pacofr.checkpointing.rng import capture_rng_state, restore_rng_state
from pacofr.cli import PacofrCLI

REPO = Path(__file__).resolve().parents[2]


def tiny_config(tmp_path: Path, root: Path, run_dir: Path, name: str, callbacks: list | None = None) -> Path:
    """The demo shrunk to seconds; re-seeding every 2 updates so a resume at an odd step checks its phase."""
    cfg = {
        "run_dir": str(run_dir),
        "model": {
            "objective": {
                "init_args": {
                    "num_codes": 32,
                    "incubation_steps": 2,
                    "codebook_options": {"proto_hidden": 32, "belief_hidden": 32, "dead_after": 2, "reseed_every": 2},
                }
            },
            "warmup_steps": 2,
        },
        "data": {"root": str(root), "image_size": 64, "batch_size": 4, "num_workers": 0, "shuffle_buffer": 8},
        "trainer": {
            "max_steps": 7,
            "val_check_interval": 3,
            "limit_val_batches": 1,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "deterministic": True,
            "callbacks": callbacks or [],
        },
        "checkpoint": {"every_n_train_steps": 2, "keep_last_n": 1},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_fit(*args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}  # not a SLURM job here
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.Popen(
        [sys.executable, "-m", "pacofr.cli", "fit", *config_args(DEMO), *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, out


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 7
    return ckpt["state_dict"]


@pytest.mark.slow  # three tiny CPU trainings: ~40 s on an idle 2-core machine
def test_preempted_run_resumes_bitwise_identical(tmp_path, make_shards):
    root = make_shards(tmp_path / "faces", {"train": [20, 20], "val": [8]}, size=72)
    ref_dir, cut_dir = tmp_path / "uninterrupted", tmp_path / "preempted"

    drill = [{"class_path": "pacofr.checkpointing.preemption.PreemptionDrill", "init_args": {"at_step": 3}}]
    # the reference and the run to be preempted are independent: run them side by side
    ref = start_fit("--config", str(tiny_config(tmp_path, root, ref_dir, "ref")))
    first = start_fit("--config", str(tiny_config(tmp_path, root, cut_dir, "cut", drill)))
    (ref_code, ref_out), (code, out) = finish(ref), finish(first)
    assert ref_code == 0, ref_out[-4000:]
    assert code == EXIT_PREEMPTED, out[-4000:]
    assert "PREEMPTED at global_step=3" in out and "requeued=no" in out, out[-4000:]
    names = sorted(p.name for p in (cut_dir / "checkpoints").iterdir())
    assert names == ["last.ckpt", "preempt.ckpt", "step00000002.ckpt"], names  # nothing saved on the way out

    code, out = finish(start_fit("--config", str(tiny_config(tmp_path, root, cut_dir, "resume")), "--resume", "auto"))
    assert code == 0, out[-4000:]
    assert "continuing from" in out and "preempt.ckpt" in out and "global step 3" in out, out[-4000:]
    # keep_last_n=1: one periodic checkpoint left, and the stale preemption checkpoint went with it
    assert sorted(p.name for p in (cut_dir / "checkpoints").iterdir()) == ["last.ckpt", "step00000007.ckpt"]

    expected, got = final_state(ref_dir), final_state(cut_dir)
    assert expected.keys() == got.keys()
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert different == [], f"{len(different)} tensors differ after resume, e.g. {different[:5]}"


def test_rng_state_round_trip_is_weights_only_loadable(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    state = capture_rng_state()
    expected = (torch.rand(4), np.random.rand(3), random.random())
    torch.save({"rng": state}, tmp_path / "rng.pt")
    torch.rand(10), np.random.rand(10), random.random()  # move every generator on
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    got = (torch.rand(4), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_resume_and_ckpt_path_are_exclusive(tmp_path):
    config = Namespace(resume="auto", ckpt_path=str(tmp_path / "x.ckpt"), checkpoint=Namespace(dirpath=str(tmp_path)))
    with pytest.raises(ValueError, match="not both"):
        PacofrCLI._resolve_resume(config)


def test_resume_auto_becomes_ckpt_path_with_weights_only(tmp_path):
    torch.save({"global_step": 4}, tmp_path / "step00000004.ckpt")
    config = Namespace(resume="auto", ckpt_path=None, weights_only=None, checkpoint=Namespace(dirpath=str(tmp_path)))
    PacofrCLI._resolve_resume(config)
    assert (config.ckpt_path, config.weights_only) == (str(tmp_path / "step00000004.ckpt"), True)
    first_run = Namespace(
        resume="auto", ckpt_path=None, weights_only=None, checkpoint=Namespace(dirpath=str(tmp_path / "new"))
    )
    PacofrCLI._resolve_resume(first_run)
    assert first_run.ckpt_path is None  # stays None: no checkpoint, a fresh start
