"""The data plan at cluster scale, simulated from index arithmetic alone (no image bytes): 2M faces in 2,000 shards
of uneven length, streamed to 64 nodes x 8 GPUs x 8 workers (4,096 lanes), several epochs.

    .venv/bin/python bench/scale.py                         # the default: 2M samples, 4,096 lanes, 3 epochs
    .venv/bin/python bench/scale.py --samples 200000 --shards 200 --nodes 4   # smaller

For each lane count it prints, per epoch of the plan (``pacofr.data.lanes.plan_epoch``, what every data worker
computes at every epoch start):

- the plan's time and peak memory (one worker computes the whole plan, then keeps its lane);
- **at most once, equal batches per rank** and what an epoch *draws*: the stream's rule (``TrainShardStream``):
  every rank yields ``N // (ranks * batch)`` batches, each lane holds the whole batches that fall to it
  (``pacofr.data.lanes.epoch_lane_sizes``), no sample is in two lanes (checked on a bitmap of all N samples),
  and the share of the split an epoch draws is printed (above 1 only when the data is under one batch per
  rank and lanes wrap);
- **read cost**: at an epoch start a worker whose lane starts mid-shard reads the shard's prefix from the tar
  stream to reach it; a resumed worker also replays its lane up to its position (samples it has consumed plus
  the shuffle buffer's fill). Both in samples, and in MB and seconds at ``--sample-kb`` per sample and
  ``--read-mbps`` of read bandwidth per worker.

And the manifest for that many shards: time to write and read it, and its size; then the prep stage at scale
(``bench/scale_prep.py``: the merge of a simulated ``--prep-chunks`` chunk array, its manifest and summary sizes,
and the error when 3 chunks are missing). Prints one markdown table per section and JSON lines.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402

from pacofr.data.format import Manifest, SplitInfo, read_manifest, write_manifest  # noqa: E402
from pacofr.data.lanes import epoch_lane_sizes, plan_lanes  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_prep import prep_scaling, print_tables  # noqa: E402


def shard_lengths(samples: int, shards: int, seed: int = 0) -> list[int]:
    """Uneven shard lengths (+-20 % around the mean) summing to ``samples``."""
    rng = random.Random(seed)
    weights = [rng.uniform(0.8, 1.2) for _ in range(shards)]
    scale = samples / sum(weights)
    lengths = [int(w * scale) for w in weights]
    for i in range(samples - sum(lengths)):
        lengths[i % shards] += 1
    return lengths


def check_at_most_once(plan: list[list], lengths: list[int], wraps: bool) -> None:
    """No sample in two lanes (unless the lanes wrap: fewer samples than one batch per rank), raises otherwise."""
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    seen = np.zeros(int(offsets[-1]), dtype=np.int32)
    for lane in plan:
        for piece in lane:
            seen[offsets[piece.shard] + piece.start : offsets[piece.shard] + piece.stop] += 1
    if not wraps and (seen > 1).any():
        raise AssertionError(f"{int((seen > 1).sum())} samples in several lanes")


def lane_costs(plan: list[list], batch: int, buffer: int, rng: random.Random) -> dict[str, list[int]]:
    """Samples a worker reads and throws away: the mid-shard prefix of its first piece (every epoch start), and
    on a resume at a random position of the epoch, the replay to its position (consumed + the buffer's fill)."""
    prefix, replay = [], []
    for lane in plan:
        size = sum(p.length for p in lane)
        per_epoch = size  # a lane holds whole batches
        prefix.append(sum(p.start for p in lane[:1]))
        position = rng.randrange(0, max(1, per_epoch))  # samples this worker has consumed this epoch
        replay.append(min(size, position + buffer))
    return {"prefix": prefix, "replay": replay}


def plan_at(lengths: list[int], lanes: int, epochs: int, world: int, batch: int, buffer: int, args) -> dict:
    times, peaks, used = [], [], []
    costs: dict[str, list[int]] = {"prefix": [], "replay": []}
    rng = random.Random(1)
    n = sum(lengths)
    workers = lanes // world
    for epoch in range(epochs):
        tracemalloc.start()
        start = time.perf_counter()
        rank_batches = max(1, n // (world * batch))  # the stream's rule (TrainShardStream.batches_per_epoch)
        sizes = epoch_lane_sizes(epoch, rank_batches, workers, world, batch)
        plan = plan_lanes(lengths, sizes, seed=0, epoch=epoch)
        times.append(time.perf_counter() - start)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        check_at_most_once(plan, lengths, wraps=sum(sizes) > n)
        per_rank = {sum(sizes[r * workers : (r + 1) * workers]) // batch for r in range(world)}
        if per_rank != {rank_batches}:
            raise AssertionError(f"ranks yield different batch counts: {per_rank}")
        used.append(sum(sizes) / n)
        for key, values in lane_costs(plan, batch, buffer, rng).items():
            costs[key] += values
    mb = args.sample_kb / 1024
    row = {
        "bench": "scale_plan",
        "lanes": lanes,
        "samples": n,
        "shards": len(lengths),
        "plan_s_median": statistics.median(times),
        "plan_peak_mib": max(peaks) / 2**20,
        "samples_per_lane": n // lanes,
        "rank_batches_per_epoch": max(1, n // (world * batch)),
        "epoch_draw_ratio": statistics.mean(used),
        "prefix_samples_mean": statistics.mean(costs["prefix"]),
        "prefix_samples_max": max(costs["prefix"]),
        "resume_samples_mean": statistics.mean(costs["replay"]),
        "resume_samples_max": max(costs["replay"]),
    }
    for key in ("prefix", "resume"):
        row[f"{key}_mb_max"] = row[f"{key}_samples_max"] * mb
        row[f"{key}_s_max"] = row[f"{key}_mb_max"] / args.read_mbps
    # with the shards' sample indexes (<shard>.idx) a worker seeks to its first sample: it reads the index
    # (24 + 8 bytes per sample of the shard) and one tar header instead of the prefix
    row["prefix_with_index_kb_max"] = (24 + 8 * max(lengths) + 512) / 1024
    return row


def manifest_cost(lengths: list[int]) -> dict:
    info = SplitInfo(sum(lengths), [f"train-{i:06d}.tar" for i in range(len(lengths))], list(lengths))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = write_manifest(tmp, Manifest(image_size=224, splits={"train": info}))
        written = time.perf_counter() - start
        start = time.perf_counter()
        read_manifest(tmp, check_shards=False)
        read = time.perf_counter() - start
        size = path.stat().st_size
    return {"bench": "scale_manifest", "shards": len(lengths), "write_s": written, "read_s": read, "bytes": size}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=2_000_000)
    p.add_argument("--shards", type=int, default=2_000)
    p.add_argument("--nodes", type=int, default=64)
    p.add_argument("--gpus", type=int, default=8, help="GPUs (ranks) per node")
    p.add_argument("--workers", type=int, default=8, help="data workers per GPU")
    p.add_argument("--batch", type=int, default=256, help="per-GPU batch")
    p.add_argument("--buffer", type=int, default=2000, help="shuffle buffer per worker (samples)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--sample-kb", type=float, default=45.0, help="bytes per sample on disk (224 px JPEG + PNG map)")
    p.add_argument("--read-mbps", type=float, default=100.0, help="read bandwidth per worker, MB/s")
    p.add_argument("--prep-chunks", type=int, default=1000, help="chunks of the simulated prep array (0: skip)")
    args = p.parse_args()
    lengths = shard_lengths(args.samples, args.shards)
    world = args.nodes * args.gpus
    rows = []
    for nodes in sorted({1, max(1, args.nodes // 8), args.nodes}):
        ranks = nodes * args.gpus
        rows.append({**plan_at(lengths, ranks * args.workers, args.epochs, ranks, args.batch, args.buffer, args),
                     "nodes": nodes})  # fmt: skip
    layout = f"{args.gpus} GPUs x {args.workers} workers per node, batch {args.batch}, {args.epochs} epochs"
    print(f"## Data plan: {args.samples:,} samples in {args.shards:,} shards, {layout}\n")
    print("| nodes | lanes | plan s | plan MiB | samples/lane | batches/rank | drawn / split | prefix max (MB, s) "
          "| prefix with index | resume max (MB, s) |\n|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    for r in rows:
        print(
            f"| {r['nodes']} | {r['lanes']:,} | {r['plan_s_median']:.4f} | {r['plan_peak_mib']:.1f} | "
            f"{r['samples_per_lane']:,} | {r['rank_batches_per_epoch']} | {r['epoch_draw_ratio']:.1%} | "
            f"{r['prefix_samples_max']:,} ({r['prefix_mb_max']:.0f} MB, {r['prefix_s_max']:.1f} s) | "
            f"{r['prefix_with_index_kb_max']:.0f} KB | "
            f"{r['resume_samples_max']:,} ({r['resume_mb_max']:.0f} MB, {r['resume_s_max']:.1f} s) |"
        )
    manifest = manifest_cost(lengths)
    print(f"\nmanifest of {manifest['shards']:,} shards: {manifest['bytes'] / 1024:.0f} KiB, written in "
          f"{manifest['write_s'] * 1000:.1f} ms, read in {manifest['read_s'] * 1000:.1f} ms")  # fmt: skip
    print(
        f"(world at {args.nodes} nodes: {world} ranks; every plan checked: no sample in two lanes, "
        "equal batches per rank)"
    )
    for r in rows:
        print(json.dumps(r))
    print(json.dumps(manifest))
    if args.prep_chunks > 0:
        print()
        print_tables(prep_scaling(args.prep_chunks, max(10, args.prep_chunks // 10)))


if __name__ == "__main__":
    main()
