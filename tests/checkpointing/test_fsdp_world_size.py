"""Sharded (FSDP) checkpoint folders: resume across world sizes, and keep-N pruning of folders.

Resume across world sizes, for real: an FSDP run on 2 CPU processes preempted at step 3 (a sharded
``preempt.ckpt``, one shard per rank) is requeued on 1 process with ``--resume auto``, global batch kept (4 x 2 ranks
-> 8 x 1), and finishes. torch.distributed.checkpoint reshards the weights and Adam's moments on load.

No uninterrupted run can be the reference: the data stream and the per-rank random state depend on the world size
(the resumed run says so). The reference is the same checkpoint made one file (``pacofr checkpoint consolidate``)
and resumed on 1 process under DDP, the path ``test_fsdp_cpu.py`` shows ends where an uninterrupted run ends: both
resumed runs see the same samples from the same state, so they must end with the same weights and moments, and a
state lost or mis-assigned in the reshard (a moment reset, a shard read into the wrong place) would show.

The bench ``bench/scale_checkpoints.py`` does the same at ViT-L/H size between two sharded world sizes (4 -> 2),
checking the loaded state against the saved one; its smoke test runs it at tiny size.

Keep-N pruning decides from each folder's ``meta.pt`` and deletes whole folders (every rank's shard with them),
on folders written by torch.distributed.checkpoint as Lightning's FSDP strategy writes them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from test_exact_resume import REPO, finish, start_fit, tiny_config
from test_fsdp_cpu import AGREE_EVERY_STEP, DRILL, FSDP, STEPS, assert_same_training, final

from pacofr.checkpointing.preemption import EXIT_PREEMPTED
from pacofr.checkpointing.prune import prune_checkpoints
from pacofr.checkpointing.resolve import checkpoint_global_step, resolve_resume


@pytest.mark.extended  # larger-scale repeat of CI-covered paths (make test-extended)
@pytest.mark.slow  # a 2-process FSDP run, then two 1-process runs side by side: ~1 min on 2 cores
def test_sharded_checkpoint_of_2_ranks_resumes_on_1(tmp_path, make_shards):
    root = make_shards(tmp_path / "faces", {"train": [20, 20], "val": [8]}, size=72)
    runs = {name: tmp_path / name for name in ("fsdp", "reference")}

    def config(name: str, run: str, callbacks: list | None = None) -> str:
        cfg = tiny_config(tmp_path, root, runs[run], name, callbacks)
        assert f"max_steps: {STEPS}" in cfg.read_text() and "batch_size: 4" in cfg.read_text()
        return str(cfg)

    code, out = finish(start_fit("--config", config("two_ranks", "fsdp", DRILL), *FSDP, AGREE_EVERY_STEP))
    assert code == EXIT_PREEMPTED and "PREEMPTED at global_step=3" in out, out[-4000:]
    preempt = runs["fsdp"] / "checkpoints" / "preempt.ckpt"
    assert sorted(p.name for p in preempt.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]

    consolidated = tmp_path / "step3.ckpt"
    subprocess.run(
        [sys.executable, "-m", "pacofr.cli", "checkpoint", "consolidate", str(preempt), "--out", str(consolidated)],
        cwd=REPO, check=True, capture_output=True, timeout=300,
    )  # fmt: skip

    one_process = ("--trainer.devices", "1", "--data.batch_size", "8")  # the same global batch
    resumed = start_fit("--config", config("one_rank", "fsdp"), *FSDP, *one_process, "--resume", "auto")
    reference = start_fit(
        "--config", config("reference", "reference"), "--trainer.strategy", "ddp", *one_process,
        "--resume", str(consolidated),
    )  # fmt: skip
    (code, out), (ref_code, ref_out) = finish(resumed), finish(reference)
    assert ref_code == 0, ref_out[-4000:]
    assert code == 0, out[-4000:]
    assert "continuing from" in out and "preempt.ckpt" in out and "global step 3" in out, out[-4000:]
    assert "world_size: 2 -> 1" in out, "the resumed run should say its data stream changed"

    last = runs["fsdp"] / "checkpoints" / "last.ckpt"
    assert sorted(p.name for p in last.glob("*.distcp")) == ["__0_0.distcp"], "saved again, now as 1 shard"
    # weights and moments (Adam's step counts 7, the backbone's 5 after incubation) as the one-file path has them
    assert_same_training(final(runs["reference"]), final(runs["fsdp"]), "2-rank sharded state resumed on 1 rank")


def write_sharded(path: Path, step: int, metadata: bool = True) -> Path:
    """A sharded checkpoint folder as Lightning's FSDP strategy writes it: DCP shards + ``.metadata``, ``meta.pt``."""
    dcp.save({"model": {"w": torch.full((64,), float(step))}}, checkpoint_id=path, no_dist=True)
    torch.save({"global_step": step, "epoch": 0}, path / "meta.pt")
    if not metadata:
        (path / ".metadata").unlink()  # a save that died before DCP's last write
    return path


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")  # DCP on one process, on purpose
def test_keep_n_pruning_removes_whole_sharded_folders(tmp_path):
    for step in (2, 4, 6, 8, 10):
        write_sharded(tmp_path / f"step{step:08d}.ckpt", step)
    write_sharded(tmp_path / "last.ckpt", 10)
    write_sharded(tmp_path / "preempt.ckpt", 7)  # older than the newest periodic one: stale
    write_sharded(tmp_path / "step00000012.ckpt", 12, metadata=False)  # incomplete: never resumed, never deleted
    write_sharded(tmp_path / ".step00000012.ckpt.partial", 12)  # the strategy's hidden in-progress name
    assert (tmp_path / "step00000002.ckpt" / "__0_0.distcp").is_file()

    removed = prune_checkpoints(tmp_path, keep_last=2)
    assert sorted(p.name for p in removed) == [
        "preempt.ckpt", "step00000002.ckpt", "step00000004.ckpt", "step00000006.ckpt",
    ]  # fmt: skip
    assert not any(p.exists() for p in removed), "a pruned folder is removed whole, shards and all"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".step00000012.ckpt.partial", "last.ckpt", "step00000008.ckpt", "step00000010.ckpt", "step00000012.ckpt",
    ]  # fmt: skip
    for kept in ("last.ckpt", "step00000008.ckpt", "step00000010.ckpt"):
        assert sorted(p.name for p in (tmp_path / kept).iterdir()) == [".metadata", "__0_0.distcp", "meta.pt"]
    assert prune_checkpoints(tmp_path, keep_last=2) == []  # idempotent
    assert checkpoint_global_step(resolve_resume("auto", tmp_path)) == 10  # a kept step-10 folder (a tie)
