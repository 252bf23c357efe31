"""The HPARAMS session under its former name. It lives in ``pacofr.hparams_session``, in the lowest layer, because
both the TensorBoard callback and ``pacofr eval`` write to it (``pacofr.eval`` importing it from here made
``pacofr.eval`` and ``pacofr.callbacks`` import each other)."""

from pacofr.hparams_session import (
    SESSION_RUN,
    add_session_metrics,
    flat_hparams,
    pretraining_log_dir,
    write_session_start,
)

__all__ = ["SESSION_RUN", "add_session_metrics", "flat_hparams", "pretraining_log_dir", "write_session_start"]
