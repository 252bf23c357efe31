"""FSDP for real, on 2 CPU processes over gloo, both presets: FSDP2 (``configs/trainer/fsdp_cpu.yaml``, the
``fsdp`` preset) and FSDP1 (``fsdp1_cpu.yaml``, one more release). Each trains the same weights as DDP, writes
sharded checkpoints (atomically, preemption included), resumes FSDP -> FSDP, DDP -> FSDP (a DDP file) and
FSDP -> DDP (``pacofr checkpoint consolidate``), each ending where the uninterrupted DDP run ends.

Cross-strategy resume only works if Adam's moments follow their parameters: FSDP keys optimiser state by name,
DDP by position in pacofr's groups (whose order is not the model's), so a mix-up would show here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_exact_resume import REPO, finish, start_fit, tiny_config

from pacofr.checkpointing.consolidate import load_sharded_checkpoint
from pacofr.checkpointing.optim_keys import NAMES_KEY, to_name_keyed
from pacofr.checkpointing.preemption import EXIT_PREEMPTED

FSDP = ("--config", str(REPO / "configs" / "trainer" / "fsdp_cpu.yaml"))
PRESETS = {"fsdp2": FSDP, "fsdp1": ("--config", str(REPO / "configs" / "trainer" / "fsdp1_cpu.yaml"))}
DDP = ("--trainer.devices", "2", "--trainer.strategy", "ddp")
# the preempted run shards hybrid (FSDP2: a 2 x 1 mesh; FSDP1: node groups from the job layout) and recomputes
# activations; its resume shards fully
HYBRID = {
    "fsdp2": (
        "--trainer.strategy.init_args.sharding=hybrid",
        "--trainer.strategy.init_args.replicas=2",
        "--trainer.strategy.init_args.activation_checkpointing=true",
    ),
    "fsdp1": (
        "--trainer.strategy.init_args.sharding_strategy=HYBRID_SHARD",
        "--trainer.strategy.init_args.activation_checkpointing=true",
    ),
}
# the signal reaches rank 1 only: both ranks must still stop at the same step (the flag is all-reduced)
DRILL = [{"class_path": "pacofr.checkpointing.preemption.PreemptionDrill", "init_args": {"at_step": 3, "rank": 1}}]
# these tests check what a preemption at a known step writes and resumes, so the ranks agree at every step here
# (by default they agree about every 10 s: tests/checkpointing/test_preemption_agreement.py)
AGREE_EVERY_STEP = "--preemption.agree_every_n_steps=1"
STEPS = 7
INCUBATION = 2  # tiny_config's incubation_steps
TOL = 1e-5  # gloo's reduce-scatter and all-reduce sum in different orders


def load_any(path: Path) -> dict:
    return load_sharded_checkpoint(path) if path.is_dir() else torch.load(path, map_location="cpu", weights_only=True)


def final(run_dir: Path) -> dict:
    ckpt = load_any(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == STEPS
    return ckpt


def named_adam_state(ckpt: dict) -> dict[str, dict[str, torch.Tensor]]:
    state = to_name_keyed(ckpt["optimizer_states"][0], ckpt[NAMES_KEY][0])
    return state["state"]


def assert_same_training(expected: dict, got: dict, what: str) -> None:
    assert expected["state_dict"].keys() == got["state_dict"].keys(), what
    for key, value in expected["state_dict"].items():
        other = got["state_dict"][key].reshape(value.shape)
        if value.is_floating_point():
            assert torch.allclose(value, other, atol=TOL, rtol=0), (
                f"{what}: {key} differs by {(value - other).abs().max()}"
            )
        else:
            assert torch.equal(value, other), f"{what}: {key} differs"
    ref, new = named_adam_state(expected), named_adam_state(got)
    assert ref.keys() == new.keys(), what
    for name in ref:
        for slot in ("exp_avg", "exp_avg_sq"):
            a, b = ref[name][slot], new[name][slot].reshape(ref[name][slot].shape)
            assert torch.allclose(a, b, atol=TOL, rtol=1e-4), f"{what}: Adam {slot} of {name} is not its own"
        # the codebook and probe groups count every step; the backbone's AdamW restarts when incubation ends
        steps = float(ref[name]["step"])
        assert steps == float(new[name]["step"]) and steps in (STEPS, STEPS - INCUBATION), (
            f"{what}: Adam step of {name}"
        )
    assert {float(s["step"]) for s in ref.values()} == {STEPS, STEPS - INCUBATION}, what


# five 2-process trainings of a tiny model, in two waves: ~3 min on 2 cores; CI trains, saves sharded and resumes
# under FSDP in test_fsdp_bf16.py
@pytest.mark.extended
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_fsdp_trains_like_ddp_and_resumes_across_strategies(preset, tmp_path, make_shards):
    fsdp_args = PRESETS[preset]
    root = make_shards(tmp_path / "faces", {"train": [20, 20], "val": [8]}, size=72)
    runs = {name: tmp_path / name for name in ("ddp", "fsdp", "ddp_to_fsdp", "fsdp_to_ddp")}

    def config(name: str, callbacks: list | None = None) -> str:
        cfg = tiny_config(tmp_path, root, runs[name], name, callbacks)
        assert f"max_steps: {STEPS}" in cfg.read_text()
        cfg.write_text(cfg.read_text().replace("keep_last_n: 1", "keep_last_n: null"))  # DDP -> FSDP needs step 4
        return str(cfg)

    # wave 1: the DDP reference, and an FSDP run preempted at step 3 (sharded preemption checkpoint); that one
    # shards HYBRID (node groups from the job layout) and recomputes activations, its resume is FULL_SHARD
    ddp = start_fit("--config", config("ddp"), *DDP)
    fsdp = start_fit("--config", config("fsdp", DRILL), *fsdp_args, *HYBRID[preset], AGREE_EVERY_STEP)
    (ddp_code, ddp_out), (code, out) = finish(ddp), finish(fsdp)
    assert ddp_code == 0, ddp_out[-4000:]
    assert code == EXIT_PREEMPTED and "PREEMPTED at global_step=3" in out, out[-4000:]
    # FSDP1 says once, on rank 0, that it goes in the next release; FSDP2 says nothing of the kind
    assert out.count("pacofr: FSDP1 (BlockFSDPStrategy") == (preset == "fsdp1"), out[-4000:]
    preempt = runs["fsdp"] / "checkpoints" / "preempt.ckpt"
    assert preempt.is_dir() and (preempt / ".metadata").is_file() and (preempt / "meta.pt").is_file()
    assert not [p for p in preempt.parent.iterdir() if p.name.startswith(".")], "a partial save was left behind"

    # FSDP -> DDP needs one file: consolidate the preemption checkpoint before the FSDP resume prunes it
    consolidated = tmp_path / "fsdp_step3.ckpt"
    subprocess.run(
        [sys.executable, "-m", "pacofr.cli", "checkpoint", "consolidate", str(preempt), "--out", str(consolidated)],
        cwd=REPO, check=True, capture_output=True, timeout=300,
    )  # fmt: skip

    # wave 2: FSDP resumes itself; FSDP resumes the DDP run's step-4 file; DDP resumes the consolidated FSDP state
    resumed = start_fit("--config", config("fsdp"), *fsdp_args, "--resume", "auto")
    ddp_step4 = str(runs["ddp"] / "checkpoints" / "step00000004.ckpt")
    d2f = start_fit("--config", config("ddp_to_fsdp"), *fsdp_args, "--resume", ddp_step4)
    f2d = start_fit("--config", config("fsdp_to_ddp"), *DDP, "--resume", str(consolidated))
    for proc in (resumed, d2f, f2d):
        code, out = finish(proc)
        assert code == 0, out[-4000:]

    reference = final(runs["ddp"])
    assert (runs["fsdp"] / "checkpoints" / "last.ckpt").is_dir(), "FSDP writes sharded checkpoints"
    assert_same_training(reference, final(runs["fsdp"]), "FSDP preempted at 3 and resumed")
    assert_same_training(reference, final(runs["ddp_to_fsdp"]), "DDP step 4 resumed under FSDP")
    assert_same_training(reference, final(runs["fsdp_to_ddp"]), "FSDP step 3, consolidated, resumed under DDP")


def test_ddp_refuses_a_sharded_checkpoint_with_the_fix_in_the_message(tmp_path):
    from jsonargparse import Namespace

    from pacofr.cli import PacofrCLI

    folder = tmp_path / "step00000004.ckpt"
    folder.mkdir()
    for strategy in ("ddp", Namespace(class_path="lightning.pytorch.strategies.DDPStrategy")):
        config = Namespace(
            resume="none", ckpt_path=str(folder), weights_only=None, trainer=Namespace(strategy=strategy),
            checkpoint=Namespace(dirpath=str(tmp_path)),
        )  # fmt: skip
        with pytest.raises(ValueError, match="pacofr checkpoint consolidate"):
            PacofrCLI._resolve_resume(config)
    fsdp = Namespace(class_path="pacofr.strategies.BlockFSDPStrategy")
    config = Namespace(resume="none", ckpt_path=str(folder), weights_only=None, trainer=Namespace(strategy=fsdp),
                       checkpoint=Namespace(dirpath=str(tmp_path)))  # fmt: skip
    PacofrCLI._resolve_resume(config)  # FSDP reads the folder itself
    assert config.ckpt_path == str(folder)
