"""``SampleKeyLog``: which sample keys each rank trained on, per optimiser step (a record for tests and
audits: after a preemption and resume every key must appear exactly once). One line per sample,
``<global_step> <key>``, appended to ``<dirpath>/keys-rank<R>.txt`` once the step is done."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class SampleKeyLog(Callback):
    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self._pending: list[str] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        keys = batch.get("key", []) if isinstance(batch, dict) else []
        # global_step was already advanced by this batch's optimiser step: the batch belongs to step - 1
        step = trainer.global_step - 1
        self._pending.extend(f"{step} {key}\n" for key in keys)
        self.dirpath.mkdir(parents=True, exist_ok=True)
        with open(self.dirpath / f"keys-rank{trainer.global_rank}.txt", "a") as fh:
            fh.writelines(self._pending)
            fh.flush()
            os.fsync(fh.fileno())
        self._pending.clear()
