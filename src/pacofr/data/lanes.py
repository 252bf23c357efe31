"""Seeding and lane planning: which samples each data worker of each rank reads in an epoch.

Every random choice of the data pipeline draws from :func:`derive_seed`, a pure function of its parts
(seed, epoch, sample key...), so the stream is the same after a resume and whatever the worker count.

Each epoch the split's shards are permuted by :func:`shard_order` (a function of seed and epoch only);
the concatenated sample sequence is cut into contiguous *lanes*: by :func:`plan_lanes` into lanes of given
sizes (the training stream's: a whole number of batches each), or by :func:`plan_epoch` into ``num_slots``
lanes of ``N // num_slots`` or one more samples. Shards are split across lanes where needed, so any shard
count works, fewer shards than lanes too; a lane is a list of :class:`Piece` (a range of one shard).

Within a lane, :func:`shuffle_windows` cuts the lane's sample slots into shuffle windows (each drawing from
several places of the lane) and :func:`window_order` permutes each: the training stream's shuffle, whose state
is the window index alone, so a resumed worker reads one window instead of its whole lane up to its position.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass


def derive_seed(*parts: object) -> int:
    """A 63-bit seed that depends only on ``parts`` (stable across processes and Python runs)."""
    blob = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little") & ((1 << 63) - 1)


def shard_order(num_shards: int, seed: int, epoch: int) -> list[int]:
    """The epoch's shard permutation: a pure function of (seed, epoch) — not of rank or workers."""
    order = list(range(num_shards))
    random.Random(derive_seed("shard-order", seed, epoch)).shuffle(order)
    return order


@dataclass(frozen=True)
class Piece:
    """Samples ``start <= i < stop`` of shard ``shard`` (manifest index)."""

    shard: int
    start: int
    stop: int

    @property
    def length(self) -> int:
        return self.stop - self.start


def plan_lanes(shard_lengths: Sequence[int], sizes: Sequence[int], seed: int, epoch: int) -> list[list[Piece]]:
    """Cut the epoch's sample sequence into consecutive lanes of ``sizes`` samples each, in order.

    The shards, concatenated in :func:`shard_order`, form one sequence of N samples; lane ``l`` gets the next
    ``sizes[l]`` of them, as pieces of one or more shards, so each sample belongs to at most one lane while the
    sizes sum to N or less (the rest of the sequence is in no lane). Sizes summing to more than N wrap around
    the sequence: samples then repeat. A lane starting mid-shard skips that shard's prefix (tar headers only).
    Costs ``O(lanes log shards + pieces)``: each lane finds its first shard by bisection.
    """
    if any(n < 0 for n in sizes):
        raise ValueError("lane sizes must not be negative")
    order = [s for s in shard_order(len(shard_lengths), seed, epoch) if shard_lengths[s] > 0]
    total = sum(shard_lengths[s] for s in order)
    if total == 0:
        raise ValueError("the split has no samples (all shard lengths are 0)")
    offsets = list(itertools.accumulate((shard_lengths[s] for s in order), initial=0))

    def pieces_of(lo: int, hi: int) -> list[Piece]:
        # only the shards that overlap [lo, hi) of the sequence (0 <= lo < hi <= total)
        out = []
        pos = bisect.bisect_right(offsets, lo) - 1
        while pos < len(order) and offsets[pos] < hi:
            a, b = max(lo, offsets[pos]), min(hi, offsets[pos + 1])
            if a < b:
                out.append(Piece(order[pos], a - offsets[pos], b - offsets[pos]))
            pos += 1
        return out

    plan, start = [], 0
    for size in sizes:
        lane, lo, left = [], start % total, size
        while left > 0:  # a lane past the end of the sequence wraps to its start
            hi = min(total, lo + left)
            lane += pieces_of(lo, hi)
            left -= hi - lo
            lo = 0
        plan.append(lane)
        start += size
    return plan


def even_sizes(total: int, num_slots: int) -> list[int]:
    """``num_slots`` sizes of ``total // num_slots`` or one more, summing to ``total``."""
    return [(lane + 1) * total // num_slots - lane * total // num_slots for lane in range(num_slots)]


def plan_epoch(shard_lengths: Sequence[int], num_slots: int, seed: int, epoch: int) -> list[list[Piece]]:
    """Cut the epoch's sample sequence into ``num_slots`` contiguous, near-equal lane ranges: lane ``l`` gets
    ``[l * N // num_slots, (l + 1) * N // num_slots)``, so every sample belongs to exactly one lane. With fewer
    samples than lanes, lane ``l`` gets sample ``l % N``."""
    if num_slots < 1:
        raise ValueError("num_slots must be >= 1")
    total = sum(n for n in shard_lengths if n > 0)
    if total == 0:
        raise ValueError("the split has no samples (all shard lengths are 0)")
    # fewer samples than lanes: one sample each, wrapping around the sequence (lane l gets sample l % N)
    sizes = [1] * num_slots if total < num_slots else even_sizes(total, num_slots)
    return plan_lanes(shard_lengths, sizes, seed, epoch)


def lane_batch_range(epoch: int, lane: int, batches_per_epoch: int, num_lanes: int) -> tuple[int, int]:
    """Lane-local batch indices ``[first, stop)`` of ``lane`` in ``epoch``: a rank's batch ``g`` belongs to epoch
    ``g // batches_per_epoch`` and to lane ``g % num_lanes`` (local index ``g // num_lanes``); empty when no batch
    of the epoch falls to the lane."""
    first = -((lane - epoch * batches_per_epoch) // num_lanes)  # ceil((epoch * B - lane) / W)
    stop = -((lane - (epoch + 1) * batches_per_epoch) // num_lanes)
    return max(first, 0), max(stop, 0)


def epoch_lane_sizes(epoch: int, batches_per_epoch: int, num_lanes: int, world_size: int, batch: int) -> list[int]:
    """Samples of every lane of every rank in ``epoch`` (rank-major): the whole batches that fall to it."""
    per_rank = []
    for lane in range(num_lanes):
        first, stop = lane_batch_range(epoch, lane, batches_per_epoch, num_lanes)
        per_rank.append((stop - first) * batch)
    return per_rank * world_size


def shuffle_windows(size: int, window: int, stripes: int) -> list[list[tuple[int, int]]]:
    """A lane's shuffle windows: for each, the slot ranges ``[lo, hi)`` (lane positions) it holds, in order.

    The lane's ``size`` slots are cut into ``k = min(stripes, size)`` near-equal contiguous segments and into
    ``n = ceil(size / window)`` windows; window ``w`` holds the ``w``-th of ``n`` near-equal consecutive chunks
    of every segment (one range per segment, possibly empty), so it mixes samples from ``k`` places of the lane
    (``k`` shards or more when the lane spans them) instead of one run. The windows partition the slots, each
    holds at most ``window + k - 1`` of them, and their chunks of a segment follow each other: a reader keeps one
    sequential cursor per segment. With a single window the lane is one range (``k`` is moot: same content).
    """
    if size < 0 or window < 1 or stripes < 1:
        raise ValueError(f"bad shuffle windows: size={size} window={window} stripes={stripes}")
    n = max(1, -(-size // window))
    k = 1 if n == 1 else min(stripes, size)
    bounds = list(itertools.accumulate(even_sizes(size, k), initial=0))
    return [
        [(lo + (hi - lo) * w // n, lo + (hi - lo) * (w + 1) // n) for lo, hi in itertools.pairwise(bounds)]
        for w in range(n)
    ]


def window_order(length: int, *seed_parts: object) -> list[int]:
    """The order in which a window of ``length`` slots is emitted: a permutation seeded by ``seed_parts`` only."""
    order = list(range(length))
    random.Random(derive_seed("window", *seed_parts)).shuffle(order)
    return order
