"""Checkpoint files written atomically: a killed job leaves the previous file intact, never a truncated one.

Lightning's ``TorchCheckpointIO`` writes straight to the final name, so a job killed mid-write leaves a
truncated file under a real checkpoint name. :class:`AtomicCheckpointIO` writes each file under a temporary
name in the same folder (names starting with ``.``, which checkpoint discovery skips), fsyncs it and renames
it onto the final name. The training command line installs it as the trainer's checkpoint IO plugin unless
the config names its own plugins, and ``pacofr checkpoint consolidate`` writes its output file with it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temp file next to the target, fsync, then ``os.replace`` onto the final name."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
