"""Checkpoints that survive preemption: atomic checkpoint files, resume resolution (``--resume auto``), keep-N
pruning, the preemption handler (flag on a signal, agree at a step boundary, checkpoint, requeue), RNG state for exact
continuation, and ``pacofr checkpoint consolidate`` for sharded (FSDP) checkpoints."""

from pacofr.checkpointing.resolve import (
    CheckpointInfo,
    CheckpointUnreadable,
    checkpoint_global_step,
    find_checkpoints,
    resolve_resume,
)

__all__ = ["CheckpointInfo", "CheckpointUnreadable", "checkpoint_global_step", "find_checkpoints", "resolve_resume"]
