"""Step checkpoints that never lose the end of a run.

Lightning's ``ModelCheckpoint`` with ``every_n_train_steps`` saves nothing when ``max_steps`` is not a
multiple of the cadence (its ``on_train_end`` only writes ``last.ckpt`` if none was ever written).
``StepCheckpoint`` also saves at the end of training, and can keep only the newest N periodic checkpoints.
The files themselves are written atomically by the trainer's checkpoint IO plugin
(:class:`~pacofr.checkpointing.atomic_io.AtomicCheckpointIO`).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from pacofr.checkpointing.prune import prune_checkpoints


class StepCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that also writes a step checkpoint (and ``last.ckpt``) when training ends.

    Args:
        keep_last_n: keep only the newest N periodic checkpoints (by the global step stored in each file) and
            drop a preemption checkpoint once a newer periodic one exists; None keeps everything
            (``pacofr.checkpointing.prune``). Other arguments: ``ModelCheckpoint``.
    """

    def __init__(self, *args: Any, keep_last_n: int | None = None, **kwargs: Any) -> None:
        if keep_last_n is not None and keep_last_n < 1:
            raise ValueError(f"keep_last_n must be >= 1 or None, got {keep_last_n}")
        super().__init__(*args, **kwargs)
        self.keep_last_n = keep_last_n

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if self.keep_last_n is not None and trainer.is_global_zero and self.dirpath:
            prune_checkpoints(self.dirpath, self.keep_last_n)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        unsaved_steps = trainer.global_step > 0 and self._last_global_step_saved != trainer.global_step
        if unsaved_steps and not self._should_skip_saving_checkpoint(trainer):
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
            return
        super().on_train_end(trainer, pl_module)
