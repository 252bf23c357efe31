"""A pretraining run's row on TensorBoard's HPARAMS page, with the evaluation scores as its metrics.

The row is a *session* written in its own sub-run, ``<run_dir>/tb/hparams``: the run's settings (a session start
summary, no experiment summary) and, as scalars of that sub-run only, its metrics: the validation loss during
pretraining and, once ``pacofr eval`` has scored a checkpoint of the run, each benchmark's primary score and
occlusion drop. With no experiment summary, TensorBoard takes a session's metrics from the scalars of its run, so
a new benchmark becomes a new column without rewriting anything; keeping the session in a sub-run keeps the
training curves (dozens of them) out of the table.

Two layers write it: the TensorBoard callback (the settings, the validation loss) and ``pacofr eval`` (the scores),
so it sits below both, with the run folder's other files (``tests/test_package_layers.py``: no package cycle).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

SESSION_RUN = "hparams"  # the sub-run of a pretraining log dir holding its HPARAMS session


def flat_hparams(values: dict[str, Any], prefix: str = "") -> dict[str, int | float | str | bool]:
    """Nested settings as ``a/b`` keys with values TensorBoard accepts (other values as their text)."""
    out: dict[str, int | float | str | bool] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_hparams(value, f"{name}/"))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def write_session_start(log_dir: str | os.PathLike[str], settings: dict[str, Any]) -> SummaryWriter:
    """The session's settings, in ``<log_dir>/hparams`` (a resumed run writes them again: the same row). Returns
    the session's writer, open, for the metrics a run adds as it goes (close it at the end)."""
    _, start, _ = hparams_summaries(flat_hparams(settings), {})
    writer = SummaryWriter(str(Path(log_dir) / SESSION_RUN))
    writer.file_writer.add_summary(start)
    writer.flush()
    return writer


def add_session_metrics(log_dir: str | os.PathLike[str], metrics: dict[str, float], step: int) -> None:
    """Scalars of the session (its metric columns) at ``step``."""
    with SummaryWriter(str(Path(log_dir) / SESSION_RUN)) as writer:
        for tag, value in metrics.items():
            writer.add_scalar(tag, float(value), step)


def pretraining_log_dir(checkpoint: str | os.PathLike[str] | None) -> Path | None:
    """``<run_dir>/tb`` of the pretraining run a checkpoint (``<run_dir>/checkpoints/<name>``) belongs to, when that
    run has an HPARAMS session; None otherwise (an exported encoder, a checkpoint moved elsewhere)."""
    if not checkpoint:
        return None
    path = Path(checkpoint)
    if path.parent.name != "checkpoints":
        return None
    log_dir = path.parent.parent / "tb"
    return log_dir if (log_dir / SESSION_RUN).is_dir() else None
