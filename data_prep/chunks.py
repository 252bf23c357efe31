"""The input list and its deterministic split into chunks, and where a chunk's files live.

Sources are named relative to the input folder (or as written in a list file), so sample keys and
the train/val split do not depend on where the data is mounted.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CHUNKS_DIR = "_chunks"
SUMMARY_NAME = "_summary.json"


def list_inputs(
    input_path: str | os.PathLike[str], exclude: str | os.PathLike[str] | None = None
) -> tuple[Path, list[str]]:
    """(root, sorted sources). A folder: every non-hidden file below it, as POSIX paths relative to
    it (non-images too: they are counted as bad input, not ignored). A file: one path per line (blank
    lines and ``#`` comments skipped), relative paths taken from the list file's folder. ``exclude``
    (the output folder) is never listed, so an --out inside --input cannot feed shards back in."""
    path = Path(input_path)
    skip = Path(exclude).resolve() if exclude is not None else None
    if path.is_dir():
        sources = []
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and Path(dirpath, d).resolve() != skip]
            for name in filenames:
                if not name.startswith("."):
                    sources.append(Path(dirpath, name).relative_to(path).as_posix())
        return path, sorted(sources)
    if path.is_file():
        lines = [line.strip() for line in path.read_text().splitlines()]
        return path.parent, sorted({line for line in lines if line and not line.startswith("#")})
    raise FileNotFoundError(f"input {path} is neither a folder of images nor a list file")


def chunk_bounds(num_items: int, num_chunks: int, chunk_index: int) -> tuple[int, int]:
    """[start, end) of chunk ``chunk_index``: contiguous, sizes differ by at most one."""
    if num_chunks < 1 or not 0 <= chunk_index < num_chunks:
        raise ValueError(f"chunk index {chunk_index} is outside 0..{num_chunks - 1}")
    return num_items * chunk_index // num_chunks, num_items * (chunk_index + 1) // num_chunks


def chunk_prefix(chunk_index: int) -> str:
    return f"c{chunk_index:05d}"


def report_path(out: str | os.PathLike[str], chunk_index: int) -> Path:
    return Path(out) / CHUNKS_DIR / f"{chunk_prefix(chunk_index)}.json"


def done_path(out: str | os.PathLike[str], chunk_index: int) -> Path:
    return Path(out) / CHUNKS_DIR / f"{chunk_prefix(chunk_index)}.done"


def started_path(out: str | os.PathLike[str], chunk_index: int) -> Path:
    """Written when a chunk starts, so a merge knows about chunks that were killed before their report."""
    return Path(out) / CHUNKS_DIR / f"{chunk_prefix(chunk_index)}.started"


def split_of(source: str, val_fraction: float) -> str:
    """'val' for a stable ``val_fraction`` of sources (hash of the source), else 'train'. Decided per
    source, so all faces of one photo land in the same split."""
    h = int.from_bytes(hashlib.sha1(f"split\0{source}".encode()).digest()[:8], "big")
    return "val" if h / 2**64 < val_fraction else "train"
