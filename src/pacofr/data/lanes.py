"""Seeding and lane planning: which samples each data worker of each rank reads in an epoch.

Every random choice of the data pipeline draws from :func:`derive_seed`, a pure function of its parts
(seed, epoch, sample key...), so the stream is the same after a resume and whatever the worker count.

Each epoch the split's shards are permuted by :func:`shard_order` (a function of seed and epoch only);
the concatenated sample sequence is cut by :func:`plan_epoch` into ``world_size * num_workers`` contiguous
*lanes* of ``N // lanes`` or one more samples. Shards are split across lanes where needed, so any shard
count works, fewer shards than lanes too; a lane is a list of :class:`Piece` (a range of one shard).
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


def plan_epoch(shard_lengths: Sequence[int], num_slots: int, seed: int, epoch: int) -> list[list[Piece]]:
    """Cut the epoch's sample sequence into ``num_slots`` contiguous, near-equal lane ranges.

    The shards, concatenated in :func:`shard_order`, form one sequence of N samples; lane ``l``
    gets ``[l * N // num_slots, (l + 1) * N // num_slots)``, as pieces of one or more shards. So
    every lane holds ``N // num_slots`` or one more samples and each sample belongs to exactly
    one lane, whatever the shard count and lengths; a lane starting mid-shard skips that shard's
    prefix (tar headers only). With fewer samples than lanes, lane ``l`` gets sample ``l % N``.
    """
    if num_slots < 1:
        raise ValueError("num_slots must be >= 1")
    order = [s for s in shard_order(len(shard_lengths), seed, epoch) if shard_lengths[s] > 0]
    total = sum(shard_lengths[s] for s in order)
    if total == 0:
        raise ValueError("the split has no samples (all shard lengths are 0)")
    offsets = list(itertools.accumulate((shard_lengths[s] for s in order), initial=0))

    def pieces_of(lo: int, hi: int) -> list[Piece]:
        # only the shards that overlap [lo, hi): found by bisection, so a plan costs O(lanes log shards + pieces)
        # instead of every lane scanning every shard (15.7 s at 4,096 lanes x 2,000 shards)
        out = []
        pos = bisect.bisect_right(offsets, lo) - 1
        while pos < len(order) and offsets[pos] < hi:
            a, b = max(lo, offsets[pos]), min(hi, offsets[pos + 1])
            if a < b:
                out.append(Piece(order[pos], a - offsets[pos], b - offsets[pos]))
            pos += 1
        return out

    if total < num_slots:
        return [pieces_of(lane % total, lane % total + 1) for lane in range(num_slots)]
    return [pieces_of(lane * total // num_slots, (lane + 1) * total // num_slots) for lane in range(num_slots)]
