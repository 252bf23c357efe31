"""The train and validation streams: resumable, rank- and worker-balanced IterableDatasets of collated batches.

Training (:class:`TrainShardStream`) is an infinite stream whose content is a pure function of the
rank-local *global batch index* ``g``:

- Every rank yields ``batches_per_epoch = max(1, N // (world_size * batch_size))`` batches per epoch,
  whatever the shard count or lengths and the worker count. Batch ``g`` of a rank belongs to epoch
  ``g // batches_per_epoch`` and to lane (worker) ``g % W`` (local index ``g // W``), because DataLoader
  (``batch_size=None``) round-robins its workers; so in each epoch a lane has the whole batches that fall to
  it (``batches_per_epoch / W``, rounded up or down), possibly none.
- Each epoch the split is cut into ``world_size * W`` lanes of exactly those sizes, a whole number of batches
  each (:func:`~pacofr.data.lanes.plan_lanes`): every sample is in at most one lane, and the samples left out
  of the epoch are fewer than one batch per rank (``N - world_size * batches_per_epoch * batch_size``; a
  different tail every epoch). Cutting lanes of ``N / lanes`` samples instead left the rest of every lane out:
  at 4,096 lanes of 488 samples and a batch of 256, half of each epoch (``bench/scale.py``). Only when
  ``N < world_size * batch_size``, or when shards turn out shorter than the manifest says (corrupt data), do
  samples repeat within an epoch rather than run dry. A stream started at ``start_batch = b0`` makes
  worker ``w`` play lane ``(b0 + w) % W``, so the loader's first batch is exactly ``g = b0``.
- The shuffle is webdataset's shuffle buffer (``shuffle_buffer`` samples per worker, seeded by (seed, epoch,
  rank, lane)) run on the lane's sample *slots* (its pieces in plan order, one slot per sample of the manifest):
  :class:`~pacofr.data.lanes.BufferOrder`, draw for draw the buffer the stream ran on samples before, so an
  undamaged dataset streams exactly as it did. Its draws depend on slot numbers only, so a worker resuming at
  lane position ``p`` replays ``p`` draws on integers (no reading, about 1 µs each), which tells it the slots
  its buffer holds at ``p`` (all among the last ``~ shuffle_buffer * ln(shuffle_buffer)`` read), reads just those,
  in ranges that bridge gaps of fewer than ``SEEK_GAP`` (16) slots, each a seek through the shard's sample index
  (:func:`~pacofr.data.lanes.coalesce`), then reads on from the buffer's read position: the read cost of a
  resume is at most ``shuffle_buffer * SEEK_GAP`` samples, typically 2.5 buffers in about 120 seeks, wherever
  the position (before: the lane replayed up to ``p``, ``bench/scale.py`` compares both). A shard without a
  sample index is read from its start, once for all the ranges in its piece (never more than the replay).
- Per-sample randomness (augmentation, masker) is seeded from (seed, epoch, sample key): the
  same after a resume and independent of the worker count.

A bad sample (:func:`~pacofr.data.shard_reader.iter_shard` finds it unreadable, or a short or unreadable shard
lacks it) keeps its slot, so positions never shift and a resume needs no knowledge of what came before (the
buffer skipped it before, which made the order depend on every earlier sample); it is stood in for by one of
the lane's *spares*, its first ``batch_size`` good samples in its shuffled order (read once per epoch, when a
bad slot is first met: about one buffer's fill), chosen by the slot's position. A lane with no good sample
borrows the first of the epoch's whole sequence (all lanes), and a split with none raises: nothing waits
forever. A sample whose pixels fail to decode is replaced by a copy of another sample of its batch
(:class:`~pacofr.data.batch_builder.BatchBuilder`). Each batch carries its worker's problem counts under
``STATS_KEY``.

Validation (:class:`ValShardStream`) is finite: rank ``r`` gets the samples with global index
``i % world_size == r``, padded to ``ceil(N / world_size)`` with copies flagged
``valid=False``, so every rank runs the same number of batches (no collective can hang) and
each real sample is scored exactly once across ranks (count metrics over ``valid`` only).
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from pacofr.data.batch import Masker
from pacofr.data.batch_builder import BatchBuilder
from pacofr.data.format import read_manifest, sample_index_path
from pacofr.data.lanes import (
    BufferOrder,
    Piece,
    coalesce,
    derive_seed,
    epoch_lane_sizes,
    lane_batch_range,
    merge_within_pieces,
    plan_lanes,
)
from pacofr.data.shard_reader import RawSample, iter_shard
from pacofr.data.stream_stats import RateLimitedWarner, StreamStats
from pacofr.data.transforms import JointTransform

STATS_KEY = "data_stats"  # batch entry carrying the producing worker's StreamStats (strip before the model)
SEEK_GAP = 16  # a resumed worker reads its buffer's slots in ranges bridging gaps of fewer slots (lanes.coalesce)


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class _SplitReader:
    """The split's manifest and shard paths (lengths come from the manifest: no tar is opened)."""

    def __init__(self, root: str | Path, split: str):
        self.root = Path(root)
        info = read_manifest(self.root).split(split)
        self.split = split
        self.paths = [self.root / name for name in info.filenames]
        self.lengths = list(info.shard_lengths)
        self.num_samples = info.num_samples
        if self.num_samples == 0:
            raise ValueError(f"split {split!r} of {self.root} has no samples")


class TrainShardStream(IterableDataset):
    """Infinite stream of collated training batches for one rank; see the module docstring.

    Use with ``DataLoader(stream, batch_size=None, num_workers=num_workers)`` — the same
    ``num_workers`` as given here (it defines the lanes). ``start_batch`` is the rank-local index
    of the first batch to yield (``global_step * accumulate_grad_batches`` on resume).
    """

    def __init__(
        self,
        root: str | Path,
        batch_size: int,
        transform: JointTransform,
        *,
        split: str = "train",
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        masker: Masker | None = None,
        shuffle_buffer: int = 1000,
        start_batch: int = 0,
        include_stats: bool = True,
        images_on_device: bool = False,
    ):
        super().__init__()
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or num_workers < 0:
            raise ValueError(
                f"bad stream config: batch_size={batch_size} rank={rank}/{world_size} workers={num_workers}"
            )
        self.reader = _SplitReader(root, split)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.num_workers, self.seed, self.shuffle_buffer = num_workers, seed, shuffle_buffer
        self.transform, self.masker, self.include_stats = transform, masker, include_stats
        self.images_on_device = images_on_device  # batches carry JPEG bytes + draws (pacofr.data.device_images)
        self.start_batch = start_batch
        self.stats = StreamStats()  # this process's counts (the in-process stream when num_workers=0)

    @property
    def num_lanes(self) -> int:
        return max(1, self.num_workers)

    @property
    def batches_per_epoch(self) -> int:
        """Batches this rank yields per epoch (identical on every rank)."""
        return max(1, self.reader.num_samples // (self.world_size * self.batch_size))

    def epoch_of(self, global_batch: int) -> int:
        return global_batch // self.batches_per_epoch

    def lane_range(self, epoch: int, lane: int) -> tuple[int, int]:
        """Lane-local batch indices ``[first, stop)`` of ``lane`` in ``epoch`` (:func:`lane_batch_range`)."""
        return lane_batch_range(epoch, lane, self.batches_per_epoch, self.num_lanes)

    def lane_sizes(self, epoch: int) -> list[int]:
        """Samples of every lane of every rank in ``epoch`` (rank-major), a whole number of batches each."""
        return epoch_lane_sizes(epoch, self.batches_per_epoch, self.num_lanes, self.world_size, self.batch_size)

    def _plan(self, epoch: int) -> list[list[Piece]]:
        return plan_lanes(self.reader.lengths, self.lane_sizes(epoch), self.seed, epoch)

    def _read_slots(
        self, pieces: list[Piece], lo: int, hi: int, stats: StreamStats, warn: Callable[[str], None]
    ) -> Iterator[RawSample | None]:
        """Slots ``lo <= q < hi`` of the sequence ``pieces`` (concatenated): the raw sample, or None where it is
        bad or missing (a short or unreadable shard), so positions never shift. Seeks to ``lo`` through the
        shard's sample index; without one, :func:`iter_shard` reads the shard from its start."""
        offsets = list(itertools.accumulate((p.length for p in pieces), initial=0))
        i = bisect.bisect_right(offsets, lo) - 1
        while lo < hi and i < len(pieces):
            piece = pieces[i]
            a, b = piece.start + lo - offsets[i], piece.start + min(hi, offsets[i + 1]) - offsets[i]
            path, expected = self.reader.paths[piece.shard], self.reader.lengths[piece.shard]
            got = 0
            for _, raw in iter_shard(path, expected, stats, warn, a, b):
                got += 1
                yield raw
            yield from itertools.repeat(None, b - a - got)
            lo, i = offsets[i + 1], i + 1

    def lane_raw_samples(
        self, epoch: int, lane: int, position: int, stats: StreamStats, warn: Callable[[str], None]
    ) -> Iterator[RawSample | None]:
        """The lane's slots in the epoch's shuffled order from lane position ``position`` to its end: a raw
        sample, or None for a bad one. Replays the buffer's draws on slot numbers up to ``position``, reads the
        slots it then holds (coalesced, through the sample index) and goes on reading from there."""
        pieces = self._plan(epoch)[self.rank * self.num_lanes + lane]
        size = sum(p.length for p in pieces)
        rng = random.Random(derive_seed("shuffle", self.seed, epoch, self.rank, lane, 0))
        order = BufferOrder(size, self.shuffle_buffer, rng)
        order.advance(position)
        held: dict[int, RawSample | None] = {}
        wanted = set(order.buffer)
        unindexed = {p.shard for p in pieces if not sample_index_path(self.reader.paths[p.shard]).is_file()}
        for lo, hi in merge_within_pieces(coalesce(order.buffer, SEEK_GAP), pieces, unindexed):
            for slot, raw in zip(range(lo, hi), self._read_slots(pieces, lo, hi, stats, warn)):
                if slot in wanted:
                    held[slot] = raw
        reader = self._read_slots(pieces, order.next_slot, size, stats, warn)
        while True:
            before = order.next_slot
            slot = order.step()
            if slot is None:
                return
            for new in range(before, order.next_slot):  # the slots the buffer took in for this draw
                held[new] = next(reader)
            yield held.pop(slot)

    def spares(self, epoch: int, lane: int, stats: StreamStats, warn: Callable[[str], None]) -> list[RawSample]:
        """Good samples that stand in for the lane's bad slots in ``epoch``: its first ``batch_size`` good ones in
        its shuffled order; a lane with none borrows the first of the epoch's whole sequence (all lanes' pieces);
        a split with none raises (never an endless search)."""
        found = list(itertools.islice(
            (raw for raw in self.lane_raw_samples(epoch, lane, 0, stats, warn) if raw is not None), self.batch_size
        ))  # fmt: skip
        if found:
            return found
        warn(f"lane {lane} of rank {self.rank} read no sample in epoch {epoch}: borrowing all shards")
        everything = [p for lane_pieces in self._plan(epoch) for p in lane_pieces]
        size = sum(p.length for p in everything)
        raws = self._read_slots(everything, 0, size, stats, warn)
        found = list(itertools.islice((raw for raw in raws if raw is not None), self.batch_size))
        if not found:
            raise RuntimeError(f"no readable sample in split {self.reader.split!r} of {self.reader.root}")
        return found

    def lane_batches(self, lane: int, first_local: int, stats: StreamStats) -> Iterator[dict[str, Any]]:
        """Lane batches from local index ``first_local`` on (rank batch ``g = local * W + lane``)."""
        warn = RateLimitedWarner()
        build = BatchBuilder(self.transform, self.masker, self.seed, warn, self.images_on_device)
        bs = self.batch_size
        local = first_local
        epoch = self.epoch_of(local * self.num_lanes + lane)
        while True:
            first, stop = self.lane_range(epoch, lane)
            if local < stop:  # else no batch of this epoch falls to the lane (more workers than batches)
                position = (local - first) * bs  # the lane's next slot: a seek, not a replay
                raws = self.lane_raw_samples(epoch, lane, position, stats, warn)
                spares: list[RawSample] = []
                for _ in range(local, stop):
                    batch_raws = list(itertools.islice(raws, bs))
                    for i, raw in enumerate(batch_raws):
                        if raw is None:  # a bad slot: a spare, chosen by its position alone
                            spares = spares or self.spares(epoch, lane, stats, warn)
                            batch_raws[i] = spares[(position + i) % len(spares)]
                    batch = build(batch_raws, epoch, stats)
                    if self.include_stats:
                        batch[STATS_KEY] = {"rank": self.rank, "lane": lane, **stats.as_dict()}
                    yield batch
                    position += bs
                local = stop
            epoch += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = _worker()
        if num_workers != self.num_lanes:
            raise RuntimeError(
                f"TrainShardStream was built for num_workers={self.num_workers} but runs in a DataLoader "
                f"with {num_workers} worker(s): pass the same number to both"
            )
        first = self.start_batch + worker  # the loader's round robin hands us batches first, first + W, ...
        stats = self.stats if get_worker_info() is None else StreamStats()
        return self.lane_batches(first % self.num_lanes, first // self.num_lanes, stats)


class ValShardStream(IterableDataset):
    """Finite validation batches for one rank (same count on every rank); batches carry ``valid``."""

    def __init__(
        self,
        root: str | Path,
        batch_size: int,
        transform: JointTransform,
        *,
        split: str = "val",
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        masker: Masker | None = None,
        include_stats: bool = True,
        images_on_device: bool = False,
    ):
        super().__init__()
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad stream config: batch_size={batch_size} rank={rank}/{world_size}")
        self.reader = _SplitReader(root, split)
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.transform, self.masker, self.include_stats = transform, masker, include_stats
        self.images_on_device = images_on_device  # batches carry JPEG bytes + draws (pacofr.data.device_images)
        self.stats = StreamStats()

    @property
    def samples_per_rank(self) -> int:
        return math.ceil(self.reader.num_samples / self.world_size)

    def __len__(self) -> int:
        return math.ceil(self.samples_per_rank / self.batch_size)

    def _indexed(self, stats: StreamStats, warn: Callable[[str], None]) -> Iterator[tuple[int, RawSample | None]]:
        """``(global index, raw or None)`` in manifest order; indices from the manifest's offsets."""
        offset = 0
        for path, expected in zip(self.reader.paths, self.reader.lengths):
            for index, raw in iter_shard(path, expected, stats, warn):
                if index >= expected:
                    stats.unreadable_samples += 1
                    warn(f"shard {path} holds more samples than its manifest length {expected}: extra ignored")
                    break
                yield offset + index, raw
            offset += expected

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = _worker()
        stats = self.stats if get_worker_info() is None else StreamStats()
        warn = RateLimitedWarner()
        build = BatchBuilder(self.transform, self.masker, self.seed, warn, self.images_on_device)
        bs, per_rank, n_batches = self.batch_size, self.samples_per_rank, len(self)
        mine = [t for t in range(n_batches) if t % num_workers == worker]
        slots: dict[int, list[RawSample | None]] = {t: [None] * min(bs, per_rank - t * bs) for t in mine}
        fallback: RawSample | None = None  # first good sample of the split: fills pads and holes
        done = 0  # batches of `mine` already yielded

        def emit(t: int) -> dict[str, Any]:
            raws = slots.pop(t)
            valid = [raw is not None for raw in raws]
            filled = [raw if raw is not None else fallback for raw in raws]
            batch = build(filled, "val", stats, valid=valid)
            if self.include_stats:
                batch[STATS_KEY] = {"rank": self.rank, "lane": worker, **stats.as_dict()}
            return batch

        for i, raw in self._indexed(stats, warn):
            if raw is not None and fallback is None:
                fallback = raw
            if i % self.world_size == self.rank:
                t, pos = divmod(i // self.world_size, bs)
                if t in slots:
                    slots[t][pos] = raw
                # batches wholly before t are complete once a fallback exists for their holes
                while fallback is not None and done < len(mine) and mine[done] < t:
                    yield emit(mine[done])
                    done += 1
        if fallback is None:
            raise RuntimeError(f"no readable sample in split {self.reader.split!r} of {self.reader.root}")
        for t in mine[done:]:
            yield emit(t)
