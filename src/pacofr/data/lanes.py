"""Seeding and lane planning: which samples each data worker of each rank reads in an epoch.

Every random choice of the data pipeline draws from :func:`derive_seed`, a pure function of its parts
(seed, epoch, sample key...), so the stream is the same after a resume and whatever the worker count.

Each epoch the split's shards are permuted by :func:`shard_order` (a function of seed and epoch only);
the concatenated sample sequence is cut into contiguous *lanes*: by :func:`plan_lanes` into lanes of given
sizes (the training stream's: a whole number of batches each), or by :func:`plan_epoch` into ``num_slots``
lanes of ``N // num_slots`` or one more samples. Shards are split across lanes where needed, so any shard
count works, fewer shards than lanes too; a lane is a list of :class:`Piece` (a range of one shard).

Within a lane, :class:`BufferOrder` is the training stream's shuffle on sample *slots* (lane positions) alone:
webdataset's shuffle buffer, draw for draw, as an explicit state a resumed worker recomputes from indices
(no reading) to learn which slots its buffer holds, then seeks to them instead of replaying its lane.
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


class BufferOrder:
    """The order in which webdataset's shuffle buffer emits a lane's ``size`` slots, as explicit state.

    ``webdataset.filters._shuffle(iter(range(size)), bufsize, initial=bufsize, rng)`` draw for draw (the stream's
    shuffle before resume by seek; ``tests/data/test_lanes.py`` compares them): it reads slots in order into a
    buffer of ``bufsize``, two at a time while filling, and emits a random one of the buffer per slot read once
    full, then drains it. The draws depend on the slot count only, never on the samples, so :meth:`advance`
    replays any number of them on integers (no reading, ~1 µs each) and leaves in :attr:`buffer` the slots held
    at that point, all below :attr:`next_slot`, the next slot to read.
    """

    def __init__(self, size: int, bufsize: int, rng: random.Random):
        self.size, self.bufsize, self.rng = size, max(1, bufsize), rng
        self.buffer: list[int] = []
        self.next_slot = 0

    def step(self) -> int | None:
        """The next emitted slot (reading :attr:`next_slot` on as the buffer does), or None when all are out."""
        buf = self.buffer
        while self.next_slot < self.size:
            buf.append(self.next_slot)
            self.next_slot += 1
            if len(buf) < self.bufsize and self.next_slot < self.size:
                buf.append(self.next_slot)
                self.next_slot += 1
            if len(buf) >= self.bufsize:
                return self._pick()
        return self._pick() if buf else None

    def _pick(self) -> int:
        buf, k = self.buffer, self.rng.randint(0, len(self.buffer) - 1)  # webdataset.filters.pick
        slot = buf[k]
        buf[k] = buf[-1]
        buf.pop()
        return slot

    def advance(self, count: int) -> None:
        """Emit ``count`` slots without looking at them."""
        for _ in range(count):
            if self.step() is None:
                return


def coalesce(slots: Sequence[int], gap: int) -> list[tuple[int, int]]:
    """Sorted ``slots`` as ranges ``[lo, hi)`` that bridge gaps of fewer than ``gap`` slots: one read each, at most
    ``gap - 1`` unwanted slots per bridged gap, so never more than ``len(slots) * gap`` slots in all."""
    ranges: list[tuple[int, int]] = []
    for slot in sorted(slots):
        if ranges and slot - ranges[-1][1] < gap:
            ranges[-1] = (ranges[-1][0], slot + 1)
        else:
            ranges.append((slot, slot + 1))
    return ranges


def merge_within_pieces(
    ranges: list[tuple[int, int]], pieces: Sequence[Piece], unindexed: set[int]
) -> list[tuple[int, int]]:
    """``ranges`` (sorted slot ranges of the sequence ``pieces``) with those in one piece of a shard in
    ``unindexed`` merged: without a sample index each range is read from its shard's start, so one read of the
    piece's span costs less than several."""
    offsets = list(itertools.accumulate((p.length for p in pieces), initial=0))
    out: list[tuple[int, int]] = []
    for lo, hi in ranges:
        if out:
            i = bisect.bisect_right(offsets, out[-1][1] - 1) - 1
            if offsets[i] <= lo < offsets[i + 1] and pieces[i].shard in unindexed:
                out[-1] = (out[-1][0], hi)
                continue
        out.append((lo, hi))
    return out
