"""A Lightning ``Trainer`` for tests: one CPU process, no logger, checkpoints, progress bar or model summary;
every other setting as the test gives it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L


def quiet_trainer(root: str | Path | None = None, **settings: Any) -> L.Trainer:
    defaults: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    if root is not None:
        defaults["default_root_dir"] = str(root)
    return L.Trainer(**{**defaults, **settings})
