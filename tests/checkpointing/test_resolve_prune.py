"""Resume resolution (``--resume auto``), atomic checkpoint writes and keep-N pruning, on real checkpoint
files written the way Lightning writes them (``AtomicCheckpointIO``)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from pacofr.checkpointing.atomic_io import AtomicCheckpointIO
from pacofr.checkpointing.cli import main as checkpoint_cli
from pacofr.checkpointing.prune import prune_checkpoints
from pacofr.checkpointing.resolve import (
    CheckpointUnreadable,
    checkpoint_global_step,
    find_checkpoints,
    resolve_resume,
)


def write_ckpt(path: Path, step: int, payload: int = 1000) -> Path:
    """A checkpoint with Lightning's top-level layout and a tensor big enough that truncation hits data."""
    state = {"global_step": step, "epoch": 0, "state_dict": {"w": torch.full((payload,), float(step))}}
    AtomicCheckpointIO().save_checkpoint(state, path)
    return path


def truncate(path: Path, keep: float = 0.5) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(int(path.stat().st_size * keep))


def test_first_run_resolves_to_none(tmp_path):
    assert resolve_resume("auto", tmp_path / "checkpoints") is None  # folder does not exist yet
    (tmp_path / "checkpoints").mkdir()
    assert resolve_resume("auto", tmp_path / "checkpoints") is None  # empty folder
    assert resolve_resume("none", tmp_path / "checkpoints") is None


def test_auto_picks_the_highest_global_step_read_from_the_files(tmp_path):
    # names lie on purpose: the step comes from the file, and last/preempt compete with periodic ones
    write_ckpt(tmp_path / "step00000009.ckpt", 4)
    write_ckpt(tmp_path / "step00000004.ckpt", 6)
    write_ckpt(tmp_path / "last.ckpt", 6)
    write_ckpt(tmp_path / "preempt.ckpt", 7)
    assert resolve_resume("auto", tmp_path) == tmp_path / "preempt.ckpt"
    write_ckpt(tmp_path / "last.ckpt", 8)
    assert resolve_resume("auto", tmp_path) == tmp_path / "last.ckpt"
    found, problems = find_checkpoints(tmp_path)
    assert [(c.path.name, c.global_step, c.kind) for c in found] == [
        ("step00000009.ckpt", 4, "periodic"),
        ("step00000004.ckpt", 6, "periodic"),
        ("preempt.ckpt", 7, "preempt"),
        ("last.ckpt", 8, "last"),
    ]
    assert problems == []


def test_truncated_newest_is_skipped_with_a_warning(tmp_path, caplog):
    write_ckpt(tmp_path / "step00000002.ckpt", 2)
    write_ckpt(tmp_path / "step00000004.ckpt", 4)
    truncate(tmp_path / "step00000004.ckpt")
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.WARNING, logger="pacofr"):
        chosen = resolve_resume("auto", tmp_path)
    assert chosen == tmp_path / "step00000002.ckpt"
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "step00000004.ckpt" in warned and "garbage.ckpt" in warned
    with pytest.raises(CheckpointUnreadable, match="not a complete checkpoint \\(truncated"):
        checkpoint_global_step(tmp_path / "step00000004.ckpt")


def test_incomplete_sharded_folder_is_skipped(tmp_path):
    write_ckpt(tmp_path / "step00000002.ckpt", 2)
    sharded = tmp_path / "step00000004.ckpt"  # FSDP sharded checkpoints are folders
    sharded.mkdir()
    torch.save({"global_step": 4}, sharded / "meta.pt")
    assert resolve_resume("auto", tmp_path) == tmp_path / "step00000002.ckpt"  # no .metadata yet
    (sharded / ".metadata").write_bytes(b"x")
    assert resolve_resume("auto", tmp_path) == sharded


def test_temp_files_of_an_interrupted_write_are_ignored(tmp_path):
    write_ckpt(tmp_path / "step00000002.ckpt", 2)
    (tmp_path / ".step00000004.ckpt.abc.tmp").write_bytes(b"half")
    assert resolve_resume("auto", tmp_path) == tmp_path / "step00000002.ckpt"


def test_explicit_path_and_errors(tmp_path):
    path = write_ckpt(tmp_path / "x.ckpt", 3)
    assert resolve_resume(str(path), tmp_path / "elsewhere") == path
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        resolve_resume(str(tmp_path / "missing.ckpt"), tmp_path)


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full (simulated)")


def test_atomic_write_keeps_the_previous_file_when_a_save_fails(tmp_path):
    path = write_ckpt(tmp_path / "last.ckpt", 5)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        AtomicCheckpointIO().save_checkpoint({"global_step": 6, "bad": _Unpicklable()}, path)
    assert path.read_bytes() == before  # never a half-written file under the real name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # and no temp file left behind
    write_ckpt(path, 7)
    assert checkpoint_global_step(path) == 7


def test_keep_n_pruning(tmp_path):
    for step in (2, 4, 6, 8):
        write_ckpt(tmp_path / f"step{step:08d}.ckpt", step)
    write_ckpt(tmp_path / "last.ckpt", 8)
    write_ckpt(tmp_path / "preempt.ckpt", 5)
    (tmp_path / "broken.ckpt").write_bytes(b"??")
    removed = prune_checkpoints(tmp_path, keep_last=2)
    assert sorted(p.name for p in removed) == ["preempt.ckpt", "step00000002.ckpt", "step00000004.ckpt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "broken.ckpt",  # unreadable: left alone, never resumed from
        "last.ckpt",
        "step00000006.ckpt",
        "step00000008.ckpt",
    ]
    # a preemption checkpoint newer than every periodic one survives (it is what a requeue resumes from)
    write_ckpt(tmp_path / "preempt.ckpt", 9)
    assert prune_checkpoints(tmp_path, keep_last=2) == []
    with pytest.raises(ValueError, match="keep_last"):
        prune_checkpoints(tmp_path, keep_last=0)


def test_checkpoint_resolve_command(tmp_path, capsys):
    write_ckpt(tmp_path / "step00000002.ckpt", 2)
    write_ckpt(tmp_path / "step00000004.ckpt", 4)
    truncate(tmp_path / "step00000004.ckpt")
    assert checkpoint_cli(["resolve", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"resume auto -> {tmp_path / 'step00000002.ckpt'}" in out and "unreadable" in out
