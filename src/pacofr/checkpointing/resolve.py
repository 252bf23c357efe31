"""Which checkpoint does ``--resume auto`` continue from?

The newest *complete* checkpoint by global step, among periodic (``step*.ckpt``), ``last.ckpt`` and the
preemption checkpoint (``preempt.ckpt``) of the run's checkpoint folder. The step is read from the file,
not guessed from its name; a file that cannot be read (truncated, half-copied) is skipped with a warning so
the previous one is used. The answer depends only on the folder's contents, so every rank of a job reaches
the same decision without a collective (nothing writes checkpoints while a job starts).

A checkpoint is a file (``torch.save``) or, for FSDP sharded state, a folder holding Lightning's ``meta.pt``
(the non-tensor state, global step included) and torch.distributed.checkpoint's ``.metadata`` (written last).
"""

from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from pacofr.errors import UserError, refused_pickle

log = logging.getLogger(__name__)

PREEMPT_NAME = "preempt.ckpt"
LAST_NAME = "last.ckpt"
SHARDED_META = "meta.pt"  # lightning.fabric.strategies.fsdp._METADATA_FILENAME
DCP_METADATA = ".metadata"  # written by torch.distributed.checkpoint when every shard is in place


class CheckpointUnreadable(UserError, RuntimeError):
    """A checkpoint file or folder that is truncated, incomplete or not a checkpoint (a user error: the commands
    end with its one line)."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    global_step: int
    kind: str  # "periodic" | "last" | "preempt"


def checkpoint_kind(path: Path) -> str:
    name = path.name
    if name == PREEMPT_NAME:
        return "preempt"
    if name == LAST_NAME or (name.startswith("last") and name.endswith(".ckpt")):
        return "last"
    return "periodic"


def checkpoint_global_step(path: str | os.PathLike[str]) -> int:
    """``global_step`` stored in a checkpoint file or sharded folder; CheckpointUnreadable when it is not complete.

    Loads with ``weights_only=True`` and ``mmap=True``: only the pickled structure is read, tensor storages
    stay on disk, so this costs milliseconds even for a large file.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / DCP_METADATA).is_file():
            raise CheckpointUnreadable(f"{path}: sharded checkpoint without {DCP_METADATA} (not completely written)")
        target = path / SHARDED_META
        if not target.is_file():
            raise CheckpointUnreadable(f"{path}: sharded checkpoint without {SHARDED_META}")
    else:
        target = path
        if not zipfile.is_zipfile(target):  # torch.save writes a zip; a truncated one loses its directory
            raise CheckpointUnreadable(
                f"{path}: not a complete checkpoint (truncated, damaged or another kind of file)"
            )
    try:
        state = torch.load(target, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises RuntimeError/EOFError/UnpicklingError/... on damaged files
        refused = refused_pickle(exc)  # a file that would run code: say what it holds, not torch's advice
        if refused is not None:
            raise CheckpointUnreadable(f"{path}: {refused}") from exc
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointUnreadable(f"{path}: cannot be read ({type(exc).__name__}: {first})") from exc
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        raise CheckpointUnreadable(f"{path}: not a Lightning checkpoint (no integer 'global_step')")
    return state["global_step"]


def _candidates(dirpath: Path) -> list[Path]:
    # temp files of AtomicCheckpointIO start with "." and are never candidates
    return sorted(p for p in dirpath.glob("*.ckpt") if not p.name.startswith("."))


def find_checkpoints(dirpath: str | os.PathLike[str]) -> tuple[list[CheckpointInfo], list[CheckpointUnreadable]]:
    """Every readable checkpoint of the folder sorted oldest to newest, and the problems with the others."""
    dirpath = Path(dirpath)
    found: list[CheckpointInfo] = []
    problems: list[CheckpointUnreadable] = []
    if not dirpath.is_dir():
        return found, problems
    for path in _candidates(dirpath):
        try:
            found.append(CheckpointInfo(path, checkpoint_global_step(path), checkpoint_kind(path)))
        except CheckpointUnreadable as exc:
            problems.append(exc)
    # same step: a preemption checkpoint or last.ckpt is as good as the periodic one; prefer the newest file
    found.sort(key=lambda c: (c.global_step, c.path.stat().st_mtime_ns))
    return found, problems


def resolve_resume(resume: str | None, dirpath: str | os.PathLike[str]) -> Path | None:
    """Translate ``--resume`` into Lightning's ``ckpt_path``.

    ``none`` (or None): start from scratch. ``auto``: newest complete checkpoint in ``dirpath``, or None on a
    first run. Anything else is a path that must exist (file or sharded folder).
    """
    if resume is None or resume == "none":
        return None
    if resume != "auto":
        path = Path(resume)
        if not path.exists():
            raise FileNotFoundError(f"--resume {resume}: no such checkpoint")
        try:
            checkpoint_global_step(path)
        except CheckpointUnreadable as exc:
            raise UserError(
                f"--resume {exc}; give another checkpoint, or --resume auto for the newest complete one of the run"
            ) from exc
        return path
    found, problems = find_checkpoints(dirpath)
    newest_readable = found[-1].global_step if found else -1
    for problem in problems:
        log.warning("pacofr resume: skipping unreadable checkpoint: %s", problem)
    if not found:
        log.info("pacofr resume: no checkpoint in %s, starting from scratch", dirpath)
        return None
    chosen = found[-1]
    log.info(
        "pacofr resume: continuing from %s (%s, global step %d; %d complete checkpoint(s), %d skipped)",
        chosen.path,
        chosen.kind,
        newest_readable,
        len(found),
        len(problems),
    )
    return chosen.path
