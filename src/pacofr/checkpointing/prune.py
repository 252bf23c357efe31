"""Keep-N pruning: only the newest ``keep_last`` periodic checkpoints stay, and a preemption checkpoint goes
once a newer periodic one exists. ``last.ckpt`` is never touched. Decided from the folder alone (global steps
read from the files), so it stays right across restarts and after a resume from an older checkpoint."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from pacofr.checkpointing.resolve import find_checkpoints

log = logging.getLogger(__name__)


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint file or sharded folder; a path that does not exist is fine."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def prune_checkpoints(dirpath: str | os.PathLike[str], keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` periodic checkpoints and stale preemption checkpoints.

    Unreadable files are left alone (a warning names them): they are never chosen for resume, and deleting
    what we cannot identify could destroy someone's data. Returns the deleted paths.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    found, problems = find_checkpoints(dirpath)
    for problem in problems:
        log.warning("pacofr prune: leaving unreadable checkpoint alone: %s", problem)
    periodic = [c for c in found if c.kind == "periodic"]
    doomed = [c.path for c in periodic[:-keep_last]]
    newest_periodic = periodic[-1].global_step if periodic else -1
    doomed += [c.path for c in found if c.kind == "preempt" and c.global_step < newest_periodic]
    for path in doomed:
        remove_checkpoint(path)
    if doomed:
        log.info("pacofr prune: removed %s", ", ".join(p.name for p in doomed))
    return doomed
