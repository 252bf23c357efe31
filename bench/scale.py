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
  stream to reach it; a resumed worker reaches its position at a random point of the epoch: *before* (until
  resume by seek) it replayed its lane up to its position through the shuffle buffer (samples it has consumed plus the
  buffer's fill); *now* it replays the buffer's draws on slot numbers (``pacofr.data.lanes.BufferOrder``, no
  reading) and reads the slots its buffer holds there, in ranges bridging gaps under ``SEEK_GAP`` slots
  (``pacofr.data.lanes.coalesce``), one seek each through the sample indexes, or without indexes each range's
  shard from its start. In samples, and in MB and seconds at ``--sample-kb`` per sample and ``--read-mbps`` of
  read bandwidth per worker; seeks counted.
- **shuffle quality** of the buffer (before and now: ``BufferOrder`` is it draw for draw) and of the alternative
  considered for resume by seek, a seeded permutation within windows of ``--buffer`` slots, each window one chunk
  from each of ``--stripes`` segments of the lane (memory: one window, as one buffer), on ``--quality-lanes``
  lanes of epoch 0, against a uniform shuffle of the whole split: per batch, the share of its sample pairs from
  one shard, the share of consecutive samples from one shard, its distinct shards, and identity collisions,
  identities taken as runs of ``--identity-run`` consecutive samples of the written order (a prep writes a
  source's faces in order: the worst case for a local shuffle).

And the manifest for that many shards: time to write and read it, and its size; then the prep stage at scale
(``bench/scale_prep.py``: the merge of a simulated ``--prep-chunks`` chunk array, its manifest and summary sizes,
and the error when 3 chunks are missing). Prints one markdown table per section and JSON lines.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
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
from pacofr.data.lanes import (  # noqa: E402
    BufferOrder,
    coalesce,
    derive_seed,
    epoch_lane_sizes,
    even_sizes,
    merge_within_pieces,
    plan_lanes,
)
from pacofr.data.streams import SEEK_GAP  # noqa: E402

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


def lane_costs(plan: list[list], workers: int, buffer: int, rng: random.Random, epoch: int) -> dict[str, list[int]]:
    """Samples a worker reads and throws away: the mid-shard prefix of its first piece (every epoch start), and
    on a resume at a random position of the epoch: before, the replay to its position (consumed + the buffer's
    fill); now, the slots its buffer holds there, read in coalesced ranges (``seek``, ``seeks``), and without
    sample indexes also each range's shard prefix (``seek_noindex``)."""
    costs: dict[str, list[int]] = {
        k: [] for k in ("prefix", "replay", "replay_noindex", "seek", "seek_noindex", "seeks")
    }
    for index, lane in enumerate(plan):
        size = sum(p.length for p in lane)
        costs["prefix"].append(sum(p.start for p in lane[:1]))
        position = rng.randrange(0, max(1, size))  # samples this worker has consumed this epoch (whole lane)
        costs["replay"].append(min(size, position + buffer))
        costs["replay_noindex"].append(min(size, position + buffer) + sum(p.start for p in lane[:1]))
        seed = derive_seed("shuffle", 0, epoch, index // workers, index % workers, 0)  # TrainShardStream's
        order = BufferOrder(size, buffer, random.Random(seed))
        order.advance(position)
        ranges = coalesce(order.buffer, SEEK_GAP)
        offsets = list(itertools.accumulate((p.length for p in lane), initial=0))
        prefixes = []
        merged = merge_within_pieces(ranges, lane, {p.shard for p in lane})  # what the stream reads without index
        for lo, _ in merged:  # without an index a range is reached by reading its shard from the start
            i = bisect.bisect_right(offsets, lo) - 1
            prefixes.append(lane[i].start + lo - offsets[i])
        costs["seek"].append(sum(hi - lo for lo, hi in ranges))
        costs["seek_noindex"].append(sum(hi - lo for lo, hi in merged) + sum(prefixes))
        costs["seeks"].append(len(ranges))
    return costs


def lane_order_buffer(lane: list, buffer: int, stripes: int, seed_parts: tuple) -> np.ndarray:
    """The stream's order of a lane's slots: the shuffle buffer's (``BufferOrder``, its first pass)."""
    order = BufferOrder(sum(p.length for p in lane), buffer, random.Random(derive_seed("shuffle", *seed_parts, 0)))
    return np.fromiter(iter(order.step, None), dtype=np.int64)


def lane_order_windows(lane: list, buffer: int, stripes: int, seed_parts: tuple) -> np.ndarray:
    """The alternative: ``ceil(size / buffer)`` windows, window ``w`` the ``w``-th chunk of each of ``stripes``
    contiguous segments of the lane, each window's slots emitted in a seeded permutation."""
    size = sum(p.length for p in lane)
    n = max(1, -(-size // buffer))
    bounds = list(itertools.accumulate(even_sizes(size, 1 if n == 1 else min(stripes, size)), initial=0))
    out = []
    for w in range(n):
        chunks = [
            np.arange(lo + (hi - lo) * w // n, lo + (hi - lo) * (w + 1) // n) for lo, hi in zip(bounds, bounds[1:])
        ]
        items = np.concatenate(chunks)
        out.append(items[np.random.default_rng(derive_seed("window", *seed_parts, w)).permutation(len(items))])
    return np.concatenate(out)


def batch_quality(groups: np.ndarray, batch: int) -> dict[str, float]:
    """Per batch of ``groups`` (a shard or identity per sample, in emitted order): the share of its sample pairs
    in one group, of consecutive samples in one group, its distinct groups, the share of batches with a collision."""
    pairs, consecutive, distinct, colliding = [], [], [], []
    for b in range(len(groups) // batch):
        g = groups[b * batch : (b + 1) * batch]
        counts = np.unique(g, return_counts=True)[1]
        pairs.append(float((counts * (counts - 1)).sum()) / (batch * (batch - 1)))
        consecutive.append(float((g[1:] == g[:-1]).mean()))
        distinct.append(len(counts))
        colliding.append(float(counts.max() > 1))
    return {
        "pairs": statistics.mean(pairs),
        "consecutive": statistics.mean(consecutive),
        "distinct": statistics.mean(distinct),
        "colliding": statistics.mean(colliding),
    }


def shuffle_quality(lengths: list[int], lanes: int, world: int, batch: int, buffer: int, args) -> dict:
    """Batch composition of the buffer and of the windows (the alternative) on ``--quality-lanes`` lanes of
    epoch 0 (each lane's batches in its emitted order), and of a uniform shuffle of the whole split (the reference)."""
    n, workers, epoch, seed = sum(lengths), lanes // world, 0, 0
    sizes = epoch_lane_sizes(epoch, max(1, n // (world * batch)), workers, world, batch)
    plan = plan_lanes(lengths, sizes, seed=seed, epoch=epoch)
    shard_start = np.concatenate([[0], np.cumsum(lengths)])  # written order: the manifest's shards in order
    rng = random.Random(2)
    picked = sorted(rng.sample(range(len(plan)), min(args.quality_lanes, len(plan))))
    out: dict = {"bench": "scale_shuffle_quality", "lanes": lanes, "batch": batch, "buffer": buffer,
                 "identity_run": args.identity_run, "lanes_measured": len(picked)}  # fmt: skip
    orders = {"buffer": (lane_order_buffer, 0)}
    orders.update({f"windows{k}": (lane_order_windows, k) for k in args.stripes})
    for name, (order_of, stripes) in orders.items():
        shard_ids, written = [], []
        for index in picked:
            lane = plan[index]
            if not lane:
                continue
            slot_shard = np.concatenate([np.full(p.length, p.shard) for p in lane])
            slot_written = np.concatenate([shard_start[p.shard] + np.arange(p.start, p.stop) for p in lane])
            order = order_of(lane, buffer, stripes, (seed, epoch, index // workers, index % workers))
            shard_ids.append(slot_shard[order])
            written.append(slot_written[order])
        per_lane_shard = [batch_quality(ids, batch) for ids in shard_ids]
        per_lane_ident = [batch_quality(w // args.identity_run, batch) for w in written]
        for metric in ("pairs", "consecutive", "distinct"):
            out[f"{name}_shard_{metric}"] = statistics.mean(q[metric] for q in per_lane_shard)
        for metric in ("pairs", "colliding"):
            out[f"{name}_identity_{metric}"] = statistics.mean(q[metric] for q in per_lane_ident)
    uniform = np.random.default_rng(3).permutation(n)[: batch * 200]  # 200 batches of a whole-split shuffle
    shard_of = np.searchsorted(shard_start, uniform, side="right") - 1
    ref_shard, ref_ident = batch_quality(shard_of, batch), batch_quality(uniform // args.identity_run, batch)
    for metric in ("pairs", "consecutive", "distinct"):
        out[f"uniform_shard_{metric}"] = ref_shard[metric]
    for metric in ("pairs", "colliding"):
        out[f"uniform_identity_{metric}"] = ref_ident[metric]
    return out


def plan_at(lengths: list[int], lanes: int, epochs: int, world: int, batch: int, buffer: int, args) -> dict:
    times, peaks, used = [], [], []
    costs: dict[str, list[int]] = {}
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
        for key, values in lane_costs(plan, workers, buffer, rng, epoch).items():
            costs.setdefault(key, []).extend(values)
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
        "resume_noindex_samples_max": max(costs["replay_noindex"]),
        "resume_seek_samples_mean": statistics.mean(costs["seek"]),
        "resume_seek_samples_max": max(costs["seek"]),
        "resume_seek_noindex_samples_mean": statistics.mean(costs["seek_noindex"]),
        "resume_seek_noindex_samples_max": max(costs["seek_noindex"]),
        "resume_seeks_mean": statistics.mean(costs["seeks"]),
        "resume_seeks_max": max(costs["seeks"]),
    }
    for key in ("prefix", "resume", "resume_noindex", "resume_seek", "resume_seek_noindex"):
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
    p.add_argument("--quality-lanes", type=int, default=16, help="lanes whose batches the shuffle quality measures")
    p.add_argument("--identity-run", type=int, default=100, help="consecutive written samples of one identity")
    p.add_argument("--stripes", type=int, nargs="*", default=[8, 32], help="segments per window (the alternative)")
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
    print(f"\n## Resume read cost at a random position of the epoch (max over workers), buffer {args.buffer:,}\n")
    print("| nodes | samples/lane | before: replay (MB, s) | now: the buffer's slots, with index (MB, s) | seeks "
          "| before, no index | now, no index (MB, s) |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for r in rows:
        print(
            f"| {r['nodes']} | {r['samples_per_lane']:,} | "
            f"{r['resume_samples_max']:,} ({r['resume_mb_max']:.0f} MB, {r['resume_s_max']:.1f} s) | "
            f"{r['resume_seek_samples_max']:,} ({r['resume_seek_mb_max']:.0f} MB, {r['resume_seek_s_max']:.1f} s) | "
            f"{r['resume_seeks_max']} | {r['resume_noindex_samples_max']:,} ({r['resume_noindex_mb_max']:.0f} MB) | "
            f"{r['resume_seek_noindex_samples_max']:,} "
            f"({r['resume_seek_noindex_mb_max']:.0f} MB, {r['resume_seek_noindex_s_max']:.1f} s) |"
        )
    quality = []
    for nodes in sorted({r["nodes"] for r in rows}):
        ranks = nodes * args.gpus
        quality.append({**shuffle_quality(lengths, ranks * args.workers, ranks, args.batch, args.buffer, args),
                        "nodes": nodes})  # fmt: skip
    print(f"\n## Shuffle quality per batch of {args.batch} (epoch 0, {args.quality_lanes} lanes; identities: runs "
          f"of {args.identity_run} written samples)\n")  # fmt: skip
    print("| nodes | shuffle | same-shard pairs | consecutive same shard | shards per batch | same-identity pairs "
          "| batches with an identity twice |\n|---|---|---|---|---|---|---|")  # fmt: skip
    labels = {"buffer": "buffer (before and now)"}
    labels.update({f"windows{k}": f"windows, {k} stripes (not taken)" for k in args.stripes})
    labels["uniform"] = "uniform, whole split"
    for q in quality:
        for name, label in labels.items():
            print(
                f"| {q['nodes']} | {label} | {q[name + '_shard_pairs']:.3f} | {q[name + '_shard_consecutive']:.3f} | "
                f"{q[name + '_shard_distinct']:.1f} | {q[name + '_identity_pairs']:.4f} | "
                f"{q[name + '_identity_colliding']:.0%} |"
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
    for q in quality:
        print(json.dumps(q))
    print(json.dumps(manifest))
    if args.prep_chunks > 0:
        print()
        print_tables(prep_scaling(args.prep_chunks, max(10, args.prep_chunks // 10)))


if __name__ == "__main__":
    main()
