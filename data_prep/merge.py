"""Merge the chunks of a prep run: check every chunk is done, write ``_info.json`` and ``_summary.json``.

The shards stay where the chunks wrote them (``train-c00000-000000.tar`` ...); the manifest lists
them in chunk order. The merge refuses, naming the chunks to rerun, when any chunk lacks its
done-marker, when chunks disagree on settings, or when a shard a chunk reported is missing.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from data_prep import chunks
from pacofr.data.format import LABEL_NAMES, Manifest, SplitInfo, write_manifest


class IncompleteRunError(RuntimeError):
    """The chunk set cannot be merged (a chunk is missing, unfinished or inconsistent)."""


def _load_reports(out: Path) -> dict[int, dict]:
    reports = {}
    for path in sorted((out / chunks.CHUNKS_DIR).glob("c*.json")):
        report = json.loads(path.read_text())
        reports[int(report["chunk_index"])] = report
    return reports


def merge(out: str | os.PathLike[str], expected_chunks: int | None = None) -> tuple[Path, dict]:
    """Write the manifest and the merged summary for a finished run; returns (manifest path, summary)."""
    out = Path(out)
    reports = _load_reports(out)
    started = [json.loads(p.read_text()) for p in sorted((out / chunks.CHUNKS_DIR).glob("c*.started"))]
    if not reports and not started:
        raise IncompleteRunError(f"no chunks in {out / chunks.CHUNKS_DIR}: run `pacofr-prep run` first")
    counts = {r["num_chunks"] for r in reports.values()} | {s["num_chunks"] for s in started}
    if expected_chunks is not None:
        counts.add(expected_chunks)
    if len(counts) != 1:
        raise IncompleteRunError(f"chunks disagree on the number of chunks: {sorted(counts)}")
    num_chunks = counts.pop()
    not_done = [i for i in range(num_chunks) if not chunks.done_path(out, i).is_file() or i not in reports]
    if not_done:
        raise IncompleteRunError(
            f"{len(not_done)} of {num_chunks} chunks are not done in {out} (chunk index: {index_ranges(not_done)}). "
            f"Rerun them with `pacofr-prep run ... --num-chunks {num_chunks} --chunk-index I` (finished chunks are "
            "skipped), then merge again"
        )
    fingerprints = {r["fingerprint"] for r in reports.values()}
    if len(fingerprints) != 1:
        raise IncompleteRunError("chunks were made with different settings; rerun the odd ones with --force")

    splits: dict[str, SplitInfo] = {}
    lost: dict[int, list[str]] = {}  # chunk -> the shards it reported that are gone
    for split in ("train", "val"):
        names, lengths = [], []
        for i in range(num_chunks):
            for name, n in reports[i]["shards"].get(split, []):
                if not (out / name).is_file():
                    lost.setdefault(i, []).append(name)
                names.append(name)
                lengths.append(int(n))
        if names or split == "train":
            splits[split] = SplitInfo(num_samples=sum(lengths), filenames=names, shard_lengths=lengths)
    if lost:
        gone = sorted(lost)
        raise IncompleteRunError(
            f"shards that done chunks reported are missing from {out}: {sum(map(len, lost.values()))} shard(s) of "
            f"{len(gone)} chunk(s) (chunk index: {index_ranges(gone)}; e.g. chunk {gone[0]} reports shard "
            f"{lost[gone[0]][0]} but it is missing). Redo them with `pacofr-prep run ... --num-chunks {num_chunks} "
            "--chunk-index I --force` (without --force a done chunk is skipped), then merge again"
        )

    summary = summarise(reports)
    first = reports[0]
    settings = first["settings"]
    prep = {
        "backend": first["backend"],
        "detector": first["detector"],
        "parser": first["parser"],
        "thresholds": {
            "min_score": settings["min_score"],
            "min_face_size": settings["min_face_size"],
            "keep": settings["keep"],
            "max_pixels": settings["max_pixels"],
            "min_side": settings["min_side"],
        },
        "settings": settings,
        "versions": first["versions"],
        "num_chunks": num_chunks,
        "summary": chunks.SUMMARY_NAME,
    }
    manifest = Manifest(
        image_size=int(settings["image_size"]),
        splits=splits,
        source=first["input"],
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        prep=prep,
    )
    summary_path = out / chunks.SUMMARY_NAME
    tmp = summary_path.with_name(f".{summary_path.name}.tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, summary_path)
    return write_manifest(out, manifest), summary


def index_ranges(indices: list[int]) -> str:
    """Sorted chunk indices, every one of them, with runs of three or more shortened: ``0-9, 17, 500-999``."""
    parts, start = [], 0
    while start < len(indices):
        end = start
        while end + 1 < len(indices) and indices[end + 1] == indices[end] + 1:
            end += 1
        if end - start >= 2:
            parts.append(f"{indices[start]}-{indices[end]}")
        else:
            parts.extend(str(i) for i in indices[start : end + 1])
        start = end + 1
    return ", ".join(parts)


def summarise(reports: dict[int, dict]) -> dict:
    """Counts over all chunks: inputs, images by outcome/reason, faces written and dropped, label areas."""
    images: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    pixels = [0] * len(LABEL_NAMES)
    errors = []
    for i in sorted(reports):
        r = reports[i]
        images.update(r["images"])
        dropped.update(r["faces_dropped"])
        pixels = [a + b for a, b in zip(pixels, r["label_pixels"])]
        errors.extend(r["errors"])
    total = sum(pixels) or 1
    return {
        "chunks": len(reports),
        "inputs": sum(r["inputs"] for r in reports.values()),
        "images": dict(sorted(images.items())),
        "faces_written": sum(r["faces_written"] for r in reports.values()),
        "faces_dropped": dict(sorted(dropped.items())),
        "label_area_fraction": {name: round(p / total, 6) for name, p in zip(LABEL_NAMES, pixels)},
        "elapsed_s": round(sum(r["elapsed_s"] for r in reports.values()), 3),
        "errors": errors,
    }
