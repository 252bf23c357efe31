"""What a run folder holds besides checkpoints and TensorBoard logs: the resolved config and the facts
that tie a run to its code and data (code version, git commit, the data manifest's digest)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pacofr


def git_commit(cwd: str | os.PathLike[str] | None = None) -> str | None:
    """The checkout's commit (with ``-dirty`` when modified), or None outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write via a temp file in the same folder and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_run_info(run_dir: str | os.PathLike[str], extra: dict[str, Any]) -> Path:
    """``run_info.json``: code version and commit, start time, plus what the caller adds (data digest...).

    Rewritten on every (re)start; earlier starts are kept in ``starts`` so requeues stay visible.
    """
    path = Path(run_dir) / "run_info.json"
    previous: dict[str, Any] = {}
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except json.JSONDecodeError:
            previous = {}
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    info = {
        "pacofr_version": pacofr.__version__,
        "git_commit": git_commit(Path(__file__).resolve().parent),
        **extra,
        "starts": [*previous.get("starts", []), now],
    }
    atomic_write_text(path, json.dumps(info, indent=2, sort_keys=True) + "\n")
    return path
