"""Sharded checkpoints written whole or not at all, for both FSDP presets.

torch.distributed.checkpoint writes its ``.metadata`` last, but rewriting an existing folder (the preemption
checkpoint, ``last.ckpt``) would leave old metadata beside half-new shards if the job died mid-write. The folder
is written under a hidden sibling name and renamed into place once every rank has written: a hidden name is never
a resume candidate, so a crash at any point leaves either the old checkpoint or the new one, never a mix.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pacofr.checkpointing.prune import remove_checkpoint


def save_folder_atomically(strategy: Any, filepath: Any, write: Callable[[Path], None]) -> None:
    """``write(partial)`` on every rank, then rank 0 renames the finished folder to ``filepath``; ``strategy``
    gives ``broadcast``, ``barrier`` and ``global_rank`` (every rank must call this)."""
    final = Path(strategy.broadcast(str(filepath)))
    partial = final.parent / f".{final.name}.partial"
    if strategy.global_rank == 0:
        remove_checkpoint(partial)  # left by a job that died mid-write
    strategy.barrier("pacofr-sharded-save-start")
    write(partial)
    strategy.barrier("pacofr-sharded-save-written")  # every shard and meta.pt are on disk
    if strategy.global_rank == 0:
        old = final.parent / f".{final.name}.old"
        if final.exists():
            remove_checkpoint(old)
            final.rename(old)
        partial.rename(final)
        remove_checkpoint(old)
    strategy.barrier("pacofr-sharded-save-renamed")
