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
  To reach its position a worker replays its lane's seeded shard read and shuffle buffer
  without decoding images (cheap), then decodes from there on.
- Per-sample randomness (augmentation, masker) is seeded from (seed, epoch, sample key): the
  same after a resume and independent of the worker count.

Bad samples are skipped when read (:func:`~pacofr.data.shard_reader.iter_shard`), before the shuffle, so
they replay identically on resume; a lane that comes up short simply wraps. A sample whose pixels fail to
decode is replaced within its batch (:class:`~pacofr.data.batch_builder.BatchBuilder`). Each batch carries
its worker's problem counts under ``STATS_KEY``.

Validation (:class:`ValShardStream`) is finite: rank ``r`` gets the samples with global index
``i % world_size == r``, padded to ``ceil(N / world_size)`` with copies flagged
``valid=False``, so every rank runs the same number of batches (no collective can hang) and
each real sample is scored exactly once across ranks (count metrics over ``valid`` only).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info
from webdataset.filters import _shuffle as wds_shuffle

from pacofr.data.batch import Masker
from pacofr.data.batch_builder import BatchBuilder
from pacofr.data.format import read_manifest
from pacofr.data.lanes import Piece, derive_seed, epoch_lane_sizes, lane_batch_range, plan_lanes
from pacofr.data.shard_reader import RawSample, iter_shard
from pacofr.data.stream_stats import RateLimitedWarner, StreamStats
from pacofr.data.transforms import JointTransform

STATS_KEY = "data_stats"  # batch entry carrying the producing worker's StreamStats (strip before the model)


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

    def lane_raw_samples(self, epoch: int, lane: int, stats: StreamStats, warn: Callable[[str], None]) -> Iterator:
        """The lane's shuffled, endless (wrapping) stream of good raw samples for one epoch."""
        plan = plan_lanes(self.reader.lengths, self.lane_sizes(epoch), self.seed, epoch)
        mine = plan[self.rank * self.num_lanes + lane]
        everything = [p for lane_pieces in plan for p in lane_pieces]

        def read(piece: Piece) -> Iterator[RawSample]:
            path, expected = self.reader.paths[piece.shard], self.reader.lengths[piece.shard]
            for _, raw in iter_shard(path, expected, stats, warn, piece.start, piece.stop):
                if raw is not None:
                    yield raw

        def one_pass(pieces: list[Piece], n: int) -> Iterator[RawSample]:
            # Each pass is shuffled on its own so a wrapping lane sees all of its samples once
            # before any repeats (a buffer spanning passes would mix copies into one epoch).
            rng = random.Random(derive_seed("shuffle", self.seed, epoch, self.rank, lane, n))
            samples = (raw for piece in pieces for raw in read(piece))
            return wds_shuffle(samples, bufsize=bufsize, initial=bufsize, rng=rng)

        def passes() -> Iterator[RawSample]:
            pieces = list(mine)
            for n in itertools.count():
                if n > 0:  # a lane short of samples re-reads its pieces in a new order
                    random.Random(derive_seed("pass", self.seed, epoch, self.rank, lane, n)).shuffle(pieces)
                got = 0
                for raw in one_pass(pieces, n):
                    got += 1
                    yield raw
                if got == 0:
                    if set(pieces) == set(everything):
                        raise RuntimeError(f"no readable sample in split {self.reader.split!r} of {self.reader.root}")
                    warn(f"lane {lane} of rank {self.rank} read no sample in epoch {epoch}: borrowing all shards")
                    pieces = list(everything)

        bufsize = max(1, self.shuffle_buffer)
        return passes()

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
                raws = self.lane_raw_samples(epoch, lane, stats, warn)
                for _ in range((local - first) * bs):  # fast-forward without decoding
                    next(raws)
                for _ in range(local, stop):
                    batch = build([next(raws) for _ in range(bs)], epoch, stats)
                    if self.include_stats:
                        batch[STATS_KEY] = {"rank": self.rank, "lane": lane, **stats.as_dict()}
                    yield batch
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
