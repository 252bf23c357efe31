"""Prep at scale, simulated: what a finished N-chunk ``pacofr-prep run`` array leaves on disk, then ``merge``.

    .venv/bin/python bench/scale_prep.py                       # 1,000 chunks (2M faces), compared with 100
    .venv/bin/python bench/scale_prep.py --chunks 200 --base-chunks 20 --missing 5

No image is processed: each chunk gets what ``data_prep.run.run_chunk`` writes — its ``_chunks/cNNNNN.started``
file, its JSON report (the same keys as run_chunk's, with realistic values: settings and fingerprint from
``PrepConfig``, tool versions, detector/parser descriptions, per-reason image counts and one ``errors`` entry per
input that gave no face), its done-marker, written with run.py's own atomic JSON writer and ``data_prep.chunks``'
paths — and its shards, as zero-length files named by ``format.shard_name``: ``merge`` only checks that a
reported shard exists (it takes the sample counts from the reports), so the shards' bytes do not change its cost.

Then it measures ``data_prep.merge.merge`` on the full array (seconds; ``_info.json`` and ``_summary.json`` sizes;
``read_manifest`` time with and without the shard check), the error ``merge`` raises when ``--missing`` chunks
(spread over the array) lost their report and done-marker (checked: it names exactly those chunk indices and
the rerun command), and the error when shards a done chunk reported are gone. Run at ``--chunks`` and
``--base-chunks``, the ratio of merge times over the ratio of chunk counts says whether merge is linear (1.0).
Prints markdown tables, then one JSON line per array size and one for the comparison.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_REPO), str(_REPO / "src")]

from data_prep import chunks  # noqa: E402
from data_prep.merge import IncompleteRunError, merge  # noqa: E402
from data_prep.run import PrepConfig, _write_json_atomic, tool_versions  # noqa: E402
from data_prep.weights import WEIGHTS  # noqa: E402
from pacofr.data.format import LABEL_NAMES, NUM_LABELS, read_manifest, shard_name  # noqa: E402

# Outcomes of inputs that give no face, weighted roughly as in web photo collections (most have no usable face).
FAILURES = (
    ("no_face", "0 candidate faces, none kept ({})"),
    ("no_face", "0 candidate faces, none kept ({})"),
    ("no_face", "0 candidate faces, none kept ({})"),
    ("no_face_kept", "2 candidate faces, none kept ({'low_score': 1, 'too_small': 1})"),
    ("no_face_kept", "1 candidate faces, none kept ({'too_small': 1})"),
    ("too_small", "48x40, shorter side < 64"),
    ("truncated", "image file is truncated (37 bytes not processed)"),
    ("not_an_image", "not a recognised image format"),
)
CRASH = ("error", "detect: RuntimeError: CUDA error: an illegal memory access was encountered at retinaface.py:88")


def spread_indices(num_chunks: int, count: int) -> list[int]:
    """``count`` chunk indices spread over the array: 17 (or less in a small array), ..., the last one."""
    if not 0 <= count <= num_chunks:
        raise ValueError(f"cannot pick {count} of {num_chunks} chunks")
    if count == 0:
        return []
    first, last = min(17, num_chunks - count), num_chunks - 1
    if count == 1:
        return [first]
    picked = sorted({first + k * (last - first) // (count - 1) for k in range(count)})
    assert len(picked) == count, picked
    return picked


def chunk_report(
    cfg: PrepConfig,
    versions: dict,
    shards: dict[str, list[list]],
    failures: int,
    crashes: int,
) -> dict:
    """The report ``run_chunk`` writes for chunk ``cfg.chunk_index``; mirrors the ``report = {...}`` of
    ``data_prep/run.py`` key for key (tests/bench/test_scale_prep.py checks the keys against run.py)."""
    i = cfg.chunk_index
    faces = sum(n for split in shards.values() for _, n in split)
    folder = f"flickr/{2010 + i % 12}/{i:05d}"
    failed = [(f"IMG_{k:06d}.jpg", *FAILURES[(i + k) % len(FAILURES)]) for k in range(failures)]
    failed += [(f"IMG_9{k:05d}.jpg", *CRASH) for k in range(crashes)]
    errors = [{"source": f"{folder}/{name}", "reason": reason, "detail": detail} for name, reason, detail in failed]
    images: dict[str, int] = {"ok": faces * 10 // 11}  # keep=all: about one photo in ten gives two faces
    for e in errors:
        images[e["reason"]] = images.get(e["reason"], 0) + 1
    # Label areas: mostly background/skin/hair, as a 256 px crop at FFHQ zoom gives.
    share = [0.42, 0.25, 0.004, 0.004, 0.003, 0.003, 0.002, 0.004, 0.004, 0.0005, 0.02, 0.003, 0.004, 0.005]
    share += [0.03, 0.001, 0.06, 0.17, 0.01]
    assert len(share) == NUM_LABELS
    pixels = [int(s * faces * cfg.image_size**2) for s in share]
    elapsed = round(0.04 * sum(images.values()) + 3.0 + (i % 13) * 0.1, 3)
    report = {
        "chunk_index": i,
        "num_chunks": cfg.num_chunks,
        "fingerprint": cfg.fingerprint(),
        "settings": cfg.output_settings(),
        "input": str(cfg.input),
        "backend": cfg.backend,
        "detector": {  # RetinaFaceDetector.describe()
            "name": cfg.detector,
            "weights": WEIGHTS[cfg.detector].filename,
            "max_side": 960,
            "nms_threshold": 0.4,
        },
        "parser": {  # FacexlibParser.describe()
            "name": cfg.parser,
            "weights": WEIGHTS[cfg.parser].filename,
            "input_size": 512,
            "label_map": "identity",
            "labels": list(LABEL_NAMES),
        },
        "device": cfg.device,
        "versions": versions,
        "inputs": sum(images.values()),
        "images": dict(sorted(images.items())),
        "faces_written": faces,
        "faces_dropped": {"low_score": 40 + i % 9, "too_small": 120 + i % 31},
        "shards": shards,
        "label_pixels": pixels,
        "errors": errors,
        "elapsed_s": elapsed,
        "images_per_s": round(sum(images.values()) / elapsed, 3),
        "skipped": False,
    }
    return report


def write_array(
    out: Path,
    num_chunks: int,
    shards_per_chunk: int = 2,
    samples_per_shard: int = 1000,
    failures_per_chunk: int = 100,
    crash_every: int = 97,
    val_fraction: float = 0.05,
) -> dict[str, list[tuple[str, int]]]:
    """Write a finished ``num_chunks`` array into ``out``, as run_chunk leaves it. Each chunk holds
    ``shards_per_chunk`` train shards (the last one a little short, as a ShardSink's last shard is), a val shard of
    ``val_fraction`` of that, and ``failures_per_chunk`` inputs without a face; every ``crash_every``-th chunk also
    has two inputs that crashed the detector. Returns every shard, {split: [(name, samples), ...]} in chunk order."""
    base = PrepConfig(
        input="/data/raw", out=str(out), num_chunks=num_chunks, backend="facexlib", device="cpu",
        max_per_shard=samples_per_shard, val_fraction=val_fraction, progress=False,
    ).resolved()  # fmt: skip
    versions = tool_versions()
    out.mkdir(parents=True, exist_ok=True)
    (out / chunks.CHUNKS_DIR).mkdir(exist_ok=True)
    expected: dict[str, list[tuple[str, int]]] = {"train": [], "val": []}
    for i in range(num_chunks):
        cfg = PrepConfig(**{**vars(base), "chunk_index": i})
        prefix = chunks.chunk_prefix(i)
        train = [samples_per_shard] * shards_per_chunk
        if train:
            train[-1] -= i % min(97, samples_per_shard)  # a chunk's last shard is short by a varying amount
        val = [max(1, round(sum(train) * val_fraction))] if train else []
        shards = {
            split: [[shard_name(split, k, prefix), n] for k, n in enumerate(lengths)]
            for split, lengths in (("train", train), ("val", val))
        }
        crashes = 2 if crash_every and i % crash_every == 0 else 0
        report = chunk_report(cfg, versions, shards, failures_per_chunk, crashes)
        _write_json_atomic(
            chunks.started_path(out, i),
            {"num_chunks": num_chunks, "fingerprint": cfg.fingerprint(), "inputs": report["inputs"]},
        )
        for split, names in shards.items():
            for name, n in names:
                (out / name).touch()  # merge checks a shard exists; its samples come from the report
                expected[split].append((name, n))
        _write_json_atomic(chunks.report_path(out, i), report)
        marker = {"fingerprint": cfg.fingerprint(), "settings": cfg.output_settings()}
        _write_json_atomic(chunks.done_path(out, i), marker)
    return expected


def _merge_error(out: Path) -> tuple[str, float]:
    start = time.perf_counter()
    try:
        merge(out)
    except IncompleteRunError as err:
        return str(err), time.perf_counter() - start
    raise AssertionError(f"merge of {out} succeeded but should have refused")


def _indices_named(message: str) -> list[int]:
    """The chunk indices an error message names (``chunk index: 3, 7-9`` -> [3, 7, 8, 9])."""
    match = re.search(r"chunk index: ([0-9, \-]+)", message)
    if not match:
        return []
    named = []
    for part in match.group(1).split(","):
        lo, _, hi = part.strip().partition("-")
        if lo:
            named.extend(range(int(lo), int(hi or lo) + 1))
    return named


def prep_at_scale(
    chunks_n: int = 1000,
    shards_per_chunk: int = 2,
    samples_per_shard: int = 1000,
    failures_per_chunk: int = 100,
    missing: int = 3,
    repeats: int = 3,
    tmp_root: str | Path | None = None,
) -> dict:
    """Simulate a finished ``chunks_n``-chunk prep array in a temp folder under ``tmp_root`` and measure merge:
    its time (best of ``repeats``), the manifest's and summary's sizes, the manifest's read time, and the errors
    for ``missing`` lost chunks (spread over the array) and for two lost shards. Returns one row of figures; the
    temp folder is removed."""
    if shards_per_chunk < 1 or samples_per_shard < 1:
        raise ValueError("a chunk needs at least one train shard of at least one sample")
    tmp = Path(tempfile.mkdtemp(prefix="scale_prep-", dir=tmp_root))
    try:
        out = tmp / "faces"
        start = time.perf_counter()
        expected = write_array(out, chunks_n, shards_per_chunk, samples_per_shard, failures_per_chunk)
        write_s = time.perf_counter() - start

        times = []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            manifest_path, summary = merge(out)
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        manifest = read_manifest(out)  # what the trainer's streams do: checks every shard exists
        read_s = time.perf_counter() - start
        start = time.perf_counter()
        read_manifest(out, check_shards=False)
        read_nocheck_s = time.perf_counter() - start
        for split in ("train", "val"):
            info = manifest.split(split)
            if list(zip(info.filenames, info.shard_lengths)) != expected[split]:
                raise AssertionError(f"{split}: the manifest does not list the shards in chunk order")
        reports_bytes = sum(p.stat().st_size for p in (out / chunks.CHUNKS_DIR).iterdir())

        # Shards a done chunk reported are gone (lost storage, a cleanup): two chunks, one shard each.
        shard_chunks = spread_indices(chunks_n, min(2, chunks_n))
        lost = [out / shard_name("train", shards_per_chunk - 1, chunks.chunk_prefix(i)) for i in shard_chunks]
        for path in lost:
            path.unlink()
        shard_error, shard_error_s = _merge_error(out) if lost else ("", 0.0)
        for path in lost:
            path.touch()

        # Chunks killed before their report (started file kept) or never started at all (the first one).
        gone = spread_indices(chunks_n, missing)
        for k, i in enumerate(gone):
            chunks.report_path(out, i).unlink()
            chunks.done_path(out, i).unlink()
            if k == 0:
                chunks.started_path(out, i).unlink()
        missing_error, missing_error_s = _merge_error(out) if gone else ("", 0.0)
        named = _indices_named(missing_error)
        rerun = f"--num-chunks {chunks_n} --chunk-index I" in missing_error
        if gone and (named != gone or not rerun):
            raise AssertionError(f"the error names chunks {named}, not {gone} (or no rerun command): {missing_error}")
        return {
            "bench": "scale_prep",
            "chunks": chunks_n,
            "shards": sum(len(v) for v in expected.values()),
            "samples": sum(n for v in expected.values() for _, n in v),
            "errors_listed": len(summary["errors"]),
            "write_array_s": write_s,
            "merge_s": min(times),
            "merge_ms_per_chunk": 1000 * min(times) / chunks_n,
            "manifest_bytes": manifest_path.stat().st_size,
            "summary_bytes": (out / chunks.SUMMARY_NAME).stat().st_size,
            "reports_bytes": reports_bytes,
            "manifest_read_s": read_s,
            "manifest_read_nocheck_s": read_nocheck_s,
            "missing_chunks": gone,
            "missing_named": named,
            "missing_error_s": missing_error_s,
            "missing_error": missing_error,
            "lost_shard_chunks": shard_chunks,
            "lost_shard_error_s": shard_error_s,
            "lost_shard_error": shard_error,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def prep_scaling(chunks_n: int = 1000, base_chunks: int = 100, **kwargs) -> list[dict]:
    """``prep_at_scale`` at ``base_chunks`` and ``chunks_n`` chunks, then a comparison row: the ratio of merge
    times over the ratio of chunk counts (1.0: linear; 10 at 10x the chunks would be quadratic)."""
    sizes = sorted({base_chunks, chunks_n})
    rows = [prep_at_scale(n, **kwargs) for n in sizes]
    small, large = rows[0], rows[-1]
    growth = large["chunks"] / small["chunks"]
    rows.append(
        {
            "bench": "scale_prep_ratio",
            "chunks": [small["chunks"], large["chunks"]],
            "merge_ratio": large["merge_s"] / small["merge_s"],
            "merge_ratio_per_chunk": large["merge_s"] / small["merge_s"] / growth,
            "manifest_bytes_ratio": large["manifest_bytes"] / small["manifest_bytes"],
            "summary_bytes_ratio": large["summary_bytes"] / small["summary_bytes"],
            "read_ratio_per_chunk": large["manifest_read_s"] / small["manifest_read_s"] / growth,
        }
    )
    return rows


def print_tables(rows: list[dict]) -> None:
    sizes = [r for r in rows if r["bench"] == "scale_prep"]
    print("## Prep at scale: merge of a finished chunk array (simulated reports, zero-length shards)\n")
    print("| chunks | shards | samples | errors listed | merge s | ms/chunk | _info.json KiB | _summary.json KiB "
          "| reports MiB | read_manifest s (no shard check) |\n|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    for r in sizes:
        print(
            f"| {r['chunks']:,} | {r['shards']:,} | {r['samples']:,} | {r['errors_listed']:,} | {r['merge_s']:.3f} | "
            f"{r['merge_ms_per_chunk']:.3f} | {r['manifest_bytes'] / 1024:.0f} | {r['summary_bytes'] / 1024:.0f} | "
            f"{r['reports_bytes'] / 2**20:.1f} | {r['manifest_read_s']:.3f} ({r['manifest_read_nocheck_s']:.3f}) |"
        )
    for r in rows:
        if r["bench"] == "scale_prep_ratio":
            a, b = r["chunks"]
            print(
                f"\n{b:,} vs {a:,} chunks: merge x{r['merge_ratio']:.2f} for x{b / a:.0f} the chunks (per chunk "
                f"x{r['merge_ratio_per_chunk']:.2f}; 1.0 = linear), _info.json x{r['manifest_bytes_ratio']:.2f}, "
                f"_summary.json x{r['summary_bytes_ratio']:.2f}"
            )
    big = sizes[-1]
    if big["missing_chunks"]:
        print(
            f"\nmerge with chunks {big['missing_chunks']} of {big['chunks']:,} missing refuses in "
            f"{big['missing_error_s']:.3f} s, naming chunks {big['missing_named']}:\n\n    {big['missing_error']}"
        )
    if big["lost_shard_chunks"]:
        print(
            f"\nmerge with one shard of chunks {big['lost_shard_chunks']} gone refuses in "
            f"{big['lost_shard_error_s']:.3f} s:\n\n    {big['lost_shard_error']}\n"
        )
    for r in rows:
        print(json.dumps(r))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=1000, help="array size (chunks)")
    p.add_argument("--base-chunks", type=int, default=None, help="smaller array to compare with (default chunks/10)")
    p.add_argument("--shards-per-chunk", type=int, default=2, help="train shards per chunk (plus one val shard)")
    p.add_argument("--samples-per-shard", type=int, default=1000)
    p.add_argument("--failures-per-chunk", type=int, default=100, help="inputs without a face per chunk (~5 %%)")
    p.add_argument("--missing", type=int, default=3, help="chunks lost before the merge")
    p.add_argument("--repeats", type=int, default=3, help="merges timed (the best is kept)")
    p.add_argument("--tmp", default=None, help="folder for the simulated array (default: the system temp)")
    args = p.parse_args(argv)
    rows = prep_scaling(
        args.chunks,
        args.base_chunks or max(1, args.chunks // 10),
        shards_per_chunk=args.shards_per_chunk,
        samples_per_shard=args.samples_per_shard,
        failures_per_chunk=args.failures_per_chunk,
        missing=args.missing,
        repeats=args.repeats,
        tmp_root=args.tmp,
    )
    print_tables(rows)


if __name__ == "__main__":
    main()
