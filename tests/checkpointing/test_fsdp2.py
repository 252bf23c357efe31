"""FSDP2, the ``fsdp`` preset (``configs/trainer/fsdp_cpu.yaml``, ``pacofr.strategies.FSDP2Strategy``), for real on
CPU processes over gloo: every shipped method trains under it, is preempted mid-epoch, and resumes to end exactly
where the uninterrupted run ends, bit for bit (as DDP's exact resume); the monitors that run the encoder outside the
step (TensorBoard images, the online probe) work on it; HSDP on 4 processes (a 2 x 2 mesh) resumes on 2 processes,
resharded, where a DDP resume of the same state ends.

CI runs PaCo-FR in ``bf16-mixed`` (codebook re-seeding between steps, incubation, spatial loss, the monitors); the
other methods run in fp32 in ``make test-extended`` (the same preset with other objectives: FSFM's momentum target,
MAEParse's heads, the full-sequence arm)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from config_files import PRETRAIN, config_args
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_exact_resume import REPO, finish
from test_fsdp_cpu import TOL, load_any, named_adam_state

from pacofr.checkpointing.consolidate import load_sharded_checkpoint
from pacofr.checkpointing.preemption import EXIT_PREEMPTED

FSDP2 = ("--config", str(REPO / "configs" / "trainer" / "fsdp_cpu.yaml"))
METHODS = ("mae", "mae_spatial", "fsfm", "pacofr", "pacofr_full")
IN_CI = {"pacofr"}
STEPS = 7
PREEMPT_AT = 3  # mid-epoch: 36 training faces, 2 ranks x 4 -> 4 batches per rank and epoch


def drill(rank: int = 1) -> dict:
    # the signal reaches one rank only: every rank must still stop at the same step (the flag is all-reduced)
    drill_class = "pacofr.checkpointing.preemption.PreemptionDrill"
    return {"class_path": drill_class, "init_args": {"at_step": PREEMPT_AT, "rank": rank}}


MONITORS = [
    {"class_path": "pacofr.callbacks.tensorboard.PretrainImages", "init_args": {"every_n_steps": 3, "num_images": 4}},
    {
        "class_path": "pacofr.callbacks.online_probe.OnlineProbe",
        "init_args": {"split": "val", "num_samples": 12, "every_n_steps": 3, "batch_size": 6},
    },
]


@pytest.fixture(scope="module")
def synth_faces(tmp_path_factory) -> Path:
    """Synthetic faces with pose and identity (what the online probe reads): 36 train, 12 val, 72 px."""
    from data_prep.cli import main as prep

    root = tmp_path_factory.mktemp("synth") / "faces"
    args = ["synth", "--out", str(root), "--n", "48", "--size", "72", "--seed", "0", "--val-fraction", "0.25"]
    assert prep(args) == 0
    return root


def method_files(method: str) -> list[str]:
    return config_args([PRETRAIN / "tiny.yaml", PRETRAIN / "method" / f"{method}.yaml"])


def shrunk(method: str, tmp_path: Path, faces: Path, name: str, callbacks: list, tag: str = "", **trainer) -> Path:
    """The method's tiny run shrunk to seconds: a 1-block decoder, re-seeding every 2 updates (PaCo-FR), a
    checkpoint every 2 steps, deterministic."""
    objective: dict = {"decoder_depth": 1, "decoder_dim": 64}
    if method.startswith("pacofr"):
        objective.update(num_codes=32, code_dim=32, incubation_steps=2)
        objective["codebook_options"] = {"proto_hidden": 32, "belief_hidden": 32, "dead_after": 2, "reseed_every": 2}
    if method == "fsfm":
        objective.update(id_hidden_dim=64, id_proj_dim=32)
    cfg = {
        "run_dir": str(tmp_path / name),
        "model": {"objective": {"init_args": objective}, "warmup_steps": 2},
        "data": {"root": str(faces), "image_size": 64, "batch_size": 4, "num_workers": 0, "shuffle_buffer": 8},
        "trainer": {
            "max_steps": STEPS, "val_check_interval": 3, "limit_val_batches": 1, "log_every_n_steps": 1,
            "enable_progress_bar": False, "deterministic": True, "callbacks": callbacks, **trainer,
        },
        "checkpoint": {"every_n_train_steps": 2, "keep_last_n": None},
        "preemption": {"agree_every_n_steps": 1},  # the ranks agree at every step: the drill stops at a known one
    }  # fmt: skip
    path = tmp_path / f"{name}{tag}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start(*args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.Popen(
        [sys.executable, "-m", "pacofr.cli", "fit", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def last(run: Path) -> dict:
    ckpt = load_any(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == STEPS
    return ckpt


def assert_bitwise(expected: dict, got: dict, what: str) -> None:
    assert expected["state_dict"].keys() == got["state_dict"].keys(), what
    for key, value in expected["state_dict"].items():
        assert torch.equal(value, got["state_dict"][key]), f"{what}: {key} differs"
    ref, new = named_adam_state(expected), named_adam_state(got)
    assert ref.keys() == new.keys(), what
    for name in ref:
        for slot in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(ref[name][slot], new[name][slot]), f"{what}: Adam {slot} of {name}"


@pytest.mark.slow  # per method: two 2-process fits side by side, then the resume: ~1.5 min on 2 cores
@pytest.mark.parametrize("method", [m if m in IN_CI else pytest.param(m, marks=pytest.mark.extended) for m in METHODS])
def test_method_under_fsdp2_is_preempted_mid_epoch_and_resumes_bitwise(method, synth_faces, tmp_path):
    monitors = MONITORS if method in IN_CI else []
    # CI's run is the GPU users' numeric path, emulated: bf16 autocast, the blocks gathering bf16 parameters
    precision = {"precision": "bf16-mixed"} if method in IN_CI else {}
    ref_cfg = shrunk(method, tmp_path, synth_faces, "uninterrupted", monitors, **precision)
    cut_cfg = shrunk(method, tmp_path, synth_faces, "preempted", [*monitors, drill()], tag="_drill", **precision)
    ref = start(*method_files(method), "--config", str(ref_cfg), *FSDP2)
    cut = start(*method_files(method), "--config", str(cut_cfg), *FSDP2)
    (ref_code, ref_out), (cut_code, cut_out) = finish(ref), finish(cut)
    assert ref_code == 0, ref_out[-4000:]
    assert cut_code == EXIT_PREEMPTED and f"PREEMPTED at global_step={PREEMPT_AT}" in cut_out, cut_out[-4000:]
    preempt = tmp_path / "preempted" / "checkpoints" / "preempt.ckpt"
    assert preempt.is_dir() and (preempt / ".metadata").is_file(), "a DCP folder, written whole"
    assert not [p for p in preempt.parent.iterdir() if p.name.startswith(".")], "a partial save was left behind"

    resume_cfg = shrunk(method, tmp_path, synth_faces, "preempted", monitors, **precision)  # the same run, no drill
    code, out = finish(start(*method_files(method), "--config", str(resume_cfg), *FSDP2, "--resume", "auto"))
    assert code == 0, out[-4000:]
    reference = last(tmp_path / "uninterrupted")
    assert_bitwise(reference, last(tmp_path / "preempted"), f"{method}: preempted at {PREEMPT_AT} and resumed")
    moved = load_sharded_checkpoint(tmp_path / "uninterrupted" / "checkpoints" / "step00000002.ckpt")
    assert any(
        not torch.equal(v, moved["state_dict"][k]) for k, v in reference["state_dict"].items() if v.is_floating_point()
    ), "the weights moved between step 2 and the end"

    if method.startswith("pacofr"):
        state = reference["state_dict"]
        assert int(state["objective.codebook.reseeded_total"]) > 0, "codes were re-seeded between steps"
        assert all(v.dtype == torch.float32 for k, v in state.items() if ".codebook." in k and v.is_floating_point())
    if monitors:
        events = EventAccumulator(str(next((tmp_path / "uninterrupted").glob("tb*"))))
        events.Reload()
        assert events.Tags()["images"], "TensorBoard image grids under FSDP2"
        probe = events.Scalars("probe/pose_mae")
        assert {3, 6} <= {e.step for e in probe}, "online probe under FSDP2, every 3 steps"
        assert all(e.value == e.value and e.value >= 0 for e in probe), "finite probe scores"


@pytest.mark.extended
@pytest.mark.slow  # a 4-process HSDP run, then two 2-process resumes side by side: ~3 min on 2 cores
def test_hsdp_on_4_processes_resumes_resharded_on_2(synth_faces, tmp_path):
    hybrid = ("--trainer.devices", "4", "--trainer.strategy.init_args.sharding=hybrid",
              "--trainer.strategy.init_args.replicas=2", "--trainer.strategy.init_args.compile_blocks=true",
              "--trainer.strategy.init_args.compile_backend=aot_eager",
              "--trainer.strategy.init_args.activation_checkpointing=true")  # fmt: skip
    cfg = shrunk("pacofr", tmp_path, synth_faces, "hsdp", [drill(rank=3)], tag="_drill")
    resume_cfg = shrunk("pacofr", tmp_path, synth_faces, "hsdp", [])
    code, out = finish(start(*method_files("pacofr"), "--config", str(cfg), *FSDP2, *hybrid))
    assert code == EXIT_PREEMPTED and f"PREEMPTED at global_step={PREEMPT_AT}" in out, out[-4000:]
    preempt = tmp_path / "hsdp" / "checkpoints" / "preempt.ckpt"
    consolidated = tmp_path / "hsdp_step3.ckpt"
    subprocess.run(
        [sys.executable, "-m", "pacofr.cli", "checkpoint", "consolidate", str(preempt), "--out", str(consolidated)],
        cwd=REPO, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    # 4 ranks x 4 -> 2 ranks x 8: the global batch kept. No uninterrupted run can be the reference (the data stream
    # depends on the world size): the same state resumed under DDP on 2 processes is
    ref_cfg = shrunk("pacofr", tmp_path, synth_faces, "ddp_reference", [])
    twice = ("--data.batch_size", "8")
    fsdp = start(*method_files("pacofr"), "--config", str(resume_cfg), *FSDP2, *twice, "--resume", str(preempt))
    ddp = start(*method_files("pacofr"), "--config", str(ref_cfg), *twice, "--trainer.devices", "2",
                "--trainer.strategy", "ddp", "--resume", str(consolidated))  # fmt: skip
    for proc in (fsdp, ddp):
        code, out = finish(proc)
        assert code == 0, out[-4000:]
    assert_same_training_any(last(tmp_path / "ddp_reference"), last(tmp_path / "hsdp"))


def assert_same_training_any(expected: dict, got: dict) -> None:
    """Weights and Adam moments equal within gloo's summation-order tolerance (``TOL``)."""
    assert expected["state_dict"].keys() == got["state_dict"].keys()
    for key, value in expected["state_dict"].items():
        other = got["state_dict"][key]
        if value.is_floating_point():
            assert torch.allclose(value, other, atol=TOL, rtol=0), f"{key} differs by {(value - other).abs().max()}"
        else:
            assert torch.equal(value, other), key
    ref, new = named_adam_state(expected), named_adam_state(got)
    for name in ref:
        for slot in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(ref[name][slot], new[name][slot], atol=TOL, rtol=1e-4), f"Adam {slot} of {name}"
