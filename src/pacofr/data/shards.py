"""Resumable, rank- and worker-balanced streams over ``pacofr-faces/1`` shards.

Training (:class:`TrainShardStream`) is an infinite IterableDataset of collated batches whose
content is a pure function of the rank-local *global batch index* ``g``:

- Each epoch the split's shards are permuted by :func:`shard_order` (a function of seed and
  epoch only); the concatenated sample sequence is cut by :func:`plan_epoch` into
  ``world_size * num_workers`` contiguous *lanes* of ``N // lanes`` or one more samples (shards
  are split across lanes where needed, so any shard count works, fewer shards than lanes too).
- Every lane yields exactly ``lane_batches_per_epoch = max(1, (N // lanes) // batch_size)``
  batches per epoch, so every rank yields ``num_workers * lane_batches_per_epoch`` per epoch
  whatever the shard count or lengths. Each sample is seen at most once per epoch; the
  remainder, ``N - lanes * lane_batches_per_epoch * batch_size`` samples (< one batch per lane
  plus one sample), is the shuffled tail of each lane and is not seen that epoch (it differs
  per epoch). Only when ``N < lanes * batch_size``, or when shards turn out shorter than the
  manifest says (corrupt data), does a lane re-read its pieces (a re-shuffled second pass:
  those samples repeat within the epoch) rather than run dry.
- Batch ``g`` belongs to lane ``g % W`` (local index ``g // W``), because DataLoader
  (``batch_size=None``) round-robins its workers. A stream started at ``start_batch = b0`` makes
  worker ``w`` play lane ``(b0 + w) % W``, so the loader's first batch is exactly ``g = b0``.
  To reach its position a worker replays its lane's seeded shard read and shuffle buffer
  without decoding images (cheap), then decodes from there on.
- Per-sample randomness (augmentation, masker) is seeded from (seed, epoch, sample key): the
  same after a resume and independent of the worker count.

A sample with a missing key or an unreadable header/JSON is skipped when read; a truncated or
unreadable shard ends early. Both are counted in :class:`StreamStats` and warned about (rate
limited). Skips happen before the shuffle, so they replay identically on resume; a lane that
comes up short simply wraps. A sample whose pixels fail to decode is replaced by another
sample of the same batch (counted), keeping the batch size and the stream position fixed.

Validation (:class:`ValShardStream`) is finite: rank ``r`` gets the samples with global index
``i % world_size == r``, padded to ``ceil(N / world_size)`` with copies flagged
``valid=False``, so every rank runs the same number of batches (no collective can hang) and
each real sample is scored exactly once across ranks (count metrics over ``valid`` only).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import logging
import math
import random
import struct
import tarfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import simplejpeg
import torch
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.filters import _shuffle as wds_shuffle
from webdataset.tariterators import group_by_keys, tar_file_iterator

from pacofr.data.batch import Masker
from pacofr.data.format import KEY_IMAGE, KEY_META, KEY_SEG, NUM_LABELS, SAMPLE_KEYS, read_manifest
from pacofr.data.transforms import JointTransform

log = logging.getLogger(__name__)

RawSample = dict[str, Any]  # {"__key__", "__url__", "jpg", "seg.png", "json", "meta": parsed json}
STATS_KEY = "data_stats"  # batch entry carrying the producing worker's StreamStats (strip before the model)


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


@dataclass
class StreamStats:
    """Problems met by one worker (cumulative since it started). Add several with ``+``."""

    samples_read: int = 0  # good raw samples read (before shuffle/skip)
    missing_keys: int = 0  # samples lacking jpg / seg.png / json: skipped
    unreadable_samples: int = 0  # bad image/label header, size mismatch or bad JSON: skipped
    decode_errors: int = 0  # pixels failed to decode: replaced by another sample of the batch
    truncated_shards: int = 0  # tar read error mid-shard: rest of the shard skipped
    unreadable_shards: int = 0  # shard could not be opened
    short_shards: int = 0  # shard held fewer samples than its manifest length

    @property
    def skipped_samples(self) -> int:
        return self.missing_keys + self.unreadable_samples + self.decode_errors

    def __add__(self, other: StreamStats) -> StreamStats:
        return StreamStats(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class RateLimitedWarner:
    """Log the first ``first`` problems, then at most one line per ``interval_s`` (with a running count)."""

    def __init__(self, logger: logging.Logger = log, first: int = 5, interval_s: float = 60.0):
        self.logger, self.first, self.interval_s = logger, first, interval_s
        self.count = 0
        self._last = -math.inf

    def __call__(self, message: str) -> None:
        self.count += 1
        now = time.monotonic()
        if self.count <= self.first or now - self._last >= self.interval_s:
            self._last = now
            self.logger.warning("%s (data problem #%d in this process)", message, self.count)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PIL's mode for each valid (bit depth, colour type) of a PNG IHDR (PIL.PngImagePlugin._MODES): the label map
# check used to read ``Image.open(...).mode``, and its messages and decisions stay those of PIL.
PNG_MODES = {
    (1, 0): "1",
    (2, 0): "L",
    (4, 0): "L",
    (8, 0): "L",
    (16, 0): "I;16",
    (8, 2): "RGB",
    (16, 2): "RGB",
    (1, 3): "P",
    (2, 3): "P",
    (4, 3): "P",
    (8, 3): "P",
    (8, 4): "LA",
    (16, 4): "RGBA",
    (8, 6): "RGBA",
    (16, 6): "RGBA",
}


def png_header(data: bytes) -> tuple[tuple[int, int], str]:
    """``((width, height), PIL mode)`` of a PNG from its chunks before the first IDAT, without decoding.

    Raises ValueError where ``PIL.Image.open`` fails on a PNG: bad signature, no or short IHDR, a bad
    CRC in a chunk before the pixel data, an unknown bit depth / colour type or filter method, or
    data ending before the first IDAT.
    """
    if data[:8] != PNG_SIGNATURE:
        raise ValueError("not a PNG file")
    pos, size, mode = 8, None, None
    while True:
        if pos + 8 > len(data):
            raise ValueError("PNG ends before its pixel data (no IDAT chunk)")
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"IDAT":
            break
        body = data[pos + 8 : pos + 8 + length]
        crc = data[pos + 8 + length : pos + 12 + length]
        if len(body) < length or len(crc) < 4:
            raise ValueError(f"PNG chunk {kind!r} is truncated")
        if zlib.crc32(kind + body) != struct.unpack(">I", crc)[0]:
            raise ValueError(f"broken PNG file (bad CRC in chunk {kind!r})")
        if size is None:
            if kind != b"IHDR" or length < 13:
                raise ValueError("PNG does not start with a complete IHDR chunk")
            width, height, depth, colour, _, png_filter, _ = struct.unpack_from(">IIBBBBB", body)
            if png_filter:
                raise ValueError("unknown PNG filter category")
            if (depth, colour) not in PNG_MODES:
                raise ValueError(f"unknown PNG mode: bit depth {depth}, colour type {colour}")
            size, mode = (width, height), PNG_MODES[(depth, colour)]
        pos += 12 + length
    if size is None or mode is None:
        raise ValueError("PNG has no IHDR chunk before its pixel data")
    return size, mode


def _check_raw(sample: RawSample) -> str | None:
    """Cheap validity check (headers only, no pixel decode): the reason it is bad, or None.

    The JPEG header is read by libjpeg-turbo (``simplejpeg.decode_jpeg_header``, a few µs), the
    PNG's IHDR with ``struct`` (:func:`png_header`): ~20x cheaper than opening both with PIL.
    """
    missing = [k for k in SAMPLE_KEYS if k not in sample]
    if missing:
        return f"missing {missing}"
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(sample[KEY_IMAGE])
        image_size = (width, height)
        seg_size, seg_mode = png_header(sample[KEY_SEG])
        sample["meta"] = json.loads(sample[KEY_META])
    except Exception as err:  # garbage bytes raise ValueError, struct.error, JSONDecodeError, ...
        return f"unreadable ({type(err).__name__}: {err})"
    if seg_mode != "L":
        return f"label map has mode {seg_mode}, expected single-channel 'L'"
    if image_size != seg_size:
        return f"image size {image_size} != label map size {seg_size}"
    return None


def iter_shard(
    path: Path,
    expected: int,
    stats: StreamStats,
    warn: Callable[[str], None],
    start: int = 0,
    stop: int | None = None,
) -> Iterator[tuple[int, RawSample | None]]:
    """``(index in shard, raw sample or None if bad)`` for samples ``start <= index < stop``.

    Never raises for bad data: read errors end the shard early; bad samples come back as None
    (counted), so indices (used for lane pieces and val rank assignment) stay stable. Samples
    before ``start`` are grouped from tar headers but not checked; reading ends at ``stop``.
    """
    try:
        fh = open(path, "rb")
        size = path.stat().st_size
    except OSError as err:
        stats.unreadable_shards += 1
        warn(f"cannot open shard {path}: {err}")
        return
    if size % tarfile.BLOCKSIZE:
        # tarfile's stream mode reads a cut-off member as short data without an error; a tar is
        # always a whole number of 512-byte blocks, so this catches cuts that don't fall on one.
        stats.truncated_shards += 1
        warn(f"shard {path} is truncated ({size} bytes is not a whole number of tar blocks)")

    def members() -> Iterator[dict[str, Any]]:
        try:
            for member in tar_file_iterator(fh):
                member["__url__"] = str(path)
                yield member
        except (tarfile.TarError, OSError, EOFError, ValueError) as err:
            stats.truncated_shards += 1
            warn(f"shard {path} is truncated or corrupt ({err}); skipping the rest of it")

    def on_group_error(err: Exception) -> bool:
        stats.unreadable_samples += 1
        warn(f"shard {path}: {err}")
        return True  # continue

    index = -1
    with fh:
        for index, sample in enumerate(group_by_keys(members(), handler=on_group_error)):
            if index < start:
                continue
            if stop is not None and index >= stop:
                return
            problem = _check_raw(sample)
            if problem is None:
                stats.samples_read += 1
                yield index, sample
                continue
            if problem.startswith("missing"):
                stats.missing_keys += 1
            else:
                stats.unreadable_samples += 1
            warn(f"skipping sample {sample.get('__key__')!r} in {path}: {problem}")
            yield index, None
    if index + 1 < expected:
        stats.short_shards += 1
        warn(f"shard {path} held {index + 1} samples, manifest says {expected}")


def decode_arrays(raw: RawSample) -> tuple[np.ndarray, np.ndarray]:
    """Full decode: image uint8 (H, W, 3) RGB, label map uint8 (H, W).

    JPEG: ``simplejpeg`` (libjpeg-turbo; with its default accurate DCT and upsampling it gives the
    very pixels of ``torchvision.io.decode_jpeg``, ~12% faster on 256 px faces, and it raises on
    truncated or corrupt data). PNG: OpenCV (libpng), ~10% faster than torchvision's; it returns
    None on bad data, turned into an error here. torchvision's decoders are deprecated since 0.29.
    """
    image = simplejpeg.decode_jpeg(raw[KEY_IMAGE], colorspace="RGB")
    labels = cv2.imdecode(np.frombuffer(raw[KEY_SEG], dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if labels is None:
        raise ValueError("label map PNG could not be decoded")
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"label map must be 8-bit single-channel, got {labels.dtype} {labels.shape}")
    if labels.shape != image.shape[:2]:
        raise ValueError(f"label map shape {labels.shape} does not fit image {image.shape}")
    return image, labels


def decode_sample(raw: RawSample) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`decode_arrays` as tensors: image uint8 [3,H,W] (a CHW view of the HWC array), labels uint8 [H,W]."""
    image, labels = decode_arrays(raw)
    return torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(labels)


def check_labels(seg: np.ndarray) -> None:
    """Raise if a decoded label map holds an id beyond the format's labels (the masker would)."""
    if seg.size and int(seg.max()) >= NUM_LABELS:
        raise ValueError(f"label map holds id {int(seg.max())}, but the labels are 0..{NUM_LABELS - 1}")


def masker_labels(masker: Masker, seg: np.ndarray) -> torch.Tensor:
    """uint8 label map(s) as the masker takes them: its ``label_dtype`` (int64 unless it says uint8)."""
    labels = torch.from_numpy(seg)
    return labels if getattr(masker, "label_dtype", torch.int64) == torch.uint8 else labels.to(torch.int64)


class BatchBuilder:
    """Decode + joint transform per sample, collate, then the masker over the batch. Shared by train and val.

    Masks come from ``masker.batch`` (one vectorised call for the batch; the default loops over
    the samples) with each sample's own generator, seeded from its key: the same masks as one call
    per sample, at a fraction of the per-call overhead.

    Images and label maps stay uint8 up to the batch (``image`` uint8 [B,3,S,S], a channels-last
    view of the collated HWC array; ``seg`` uint8 [B,S,S]): a quarter and an eighth of the bytes
    of float32 / int64 to collate, share between processes and copy to the device, where
    ``PretrainDataModule.on_after_batch_transfer`` turns them into the network's float input.
    """

    def __init__(self, transform: JointTransform, masker: Masker | None, seed: int, warn: Callable[[str], None]):
        self.transform, self.masker, self.seed, self.warn = transform, masker, seed, warn
        if get_worker_info() is not None:
            cv2.setNumThreads(1)  # one DataLoader worker = one core; OpenCV's own pool would oversubscribe

    def _one(self, raw: RawSample, epoch: int | str) -> dict[str, Any]:
        image, seg = decode_arrays(raw)
        if self.masker is not None:
            check_labels(seg)  # a bad map fails here, as this sample's error, not the whole batch's masking
        key = raw["__key__"]
        gen = torch.Generator().manual_seed(derive_seed("augment", self.seed, epoch, key))
        image, seg, _ = self.transform.apply(image, seg, gen)
        return {"image": image, "seg": seg, "key": key}

    def _masks(self, batch: dict[str, Any], epoch: int | str) -> dict[str, torch.Tensor]:
        """The masker's entries for the collated batch; sample ``b``'s draws come from its own seeded generator."""
        gens = [torch.Generator().manual_seed(derive_seed("mask", self.seed, epoch, key)) for key in batch["key"]]
        labels = masker_labels(self.masker, batch["seg"].numpy())
        batched = getattr(self.masker, "batch", None)
        if callable(batched):
            return batched(labels, gens)
        results = [self.masker(seg, gen).as_dict() for seg, gen in zip(labels, gens)]  # type: ignore[misc]
        return {name: torch.stack([r[name] for r in results]) for name in results[0]}

    def __call__(
        self,
        raws: Sequence[RawSample | None],
        epoch: int | str,
        stats: StreamStats,
        valid: Sequence[bool] | None = None,
    ) -> dict[str, Any]:
        """Collate ``raws``; a None or undecodable entry becomes a copy of a good one in the batch."""
        items: list[dict[str, Any] | None] = []
        for raw in raws:
            if raw is None:
                items.append(None)
                continue
            try:
                items.append(self._one(raw, epoch))
            except Exception as err:  # a corrupt JPEG/PNG body can raise many exception types
                stats.decode_errors += 1
                self.warn(f"cannot decode sample {raw.get('__key__')!r} from {raw.get('__url__')}: {err!r}")
                items.append(None)
        good = [i for i, item in enumerate(items) if item is not None]
        if not good:
            raise RuntimeError(f"every sample of a batch failed to decode (keys {[r and r['__key__'] for r in raws]})")
        flags = list(valid) if valid is not None else [True] * len(items)
        for i, item in enumerate(items):
            if item is None:
                items[i] = items[good[i % len(good)]]
                flags[i] = False
        batch = collate(items)  # type: ignore[arg-type]
        if self.masker is not None:
            batch.update(self._masks(batch, epoch))
        if valid is not None:
            batch["valid"] = torch.tensor(flags, dtype=torch.bool)
        return batch


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack per-sample dicts: ``key`` -> list, numpy arrays via ``np.stack``, tensors via ``torch.stack``;
    ``image`` (HWC arrays) comes out as a (B, 3, S, S) channels-last view, without a copy."""
    batch: dict[str, Any] = {"key": [item["key"] for item in items]}
    for name in items[0]:
        if name == "key":
            continue
        values = [item[name] for item in items]
        if isinstance(values[0], np.ndarray):
            batch[name] = torch.from_numpy(np.stack(values))
        else:
            batch[name] = torch.stack(values)
    if "image" in batch:
        batch["image"] = batch["image"].permute(0, 3, 1, 2)  # (B, S, S, 3) -> (B, 3, S, S)
    return batch


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
        self.start_batch = start_batch
        self.stats = StreamStats()  # this process's counts (the in-process stream when num_workers=0)

    @property
    def num_lanes(self) -> int:
        return max(1, self.num_workers)

    @property
    def lane_batches_per_epoch(self) -> int:
        per_lane = self.reader.num_samples // (self.world_size * self.num_lanes)
        return max(1, per_lane // self.batch_size)

    @property
    def batches_per_epoch(self) -> int:
        """Batches this rank yields per epoch (identical on every rank)."""
        return self.num_lanes * self.lane_batches_per_epoch

    def epoch_of(self, global_batch: int) -> int:
        return global_batch // self.batches_per_epoch

    def lane_raw_samples(self, epoch: int, lane: int, stats: StreamStats, warn: Callable[[str], None]) -> Iterator:
        """The lane's shuffled, endless (wrapping) stream of good raw samples for one epoch."""
        plan = plan_epoch(self.reader.lengths, self.world_size * self.num_lanes, self.seed, epoch)
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
        build = BatchBuilder(self.transform, self.masker, self.seed, warn)
        per_epoch, bs = self.lane_batches_per_epoch, self.batch_size
        local = first_local
        while True:
            epoch, within = divmod(local, per_epoch)
            raws = self.lane_raw_samples(epoch, lane, stats, warn)
            for _ in range(within * bs):  # fast-forward without decoding
                next(raws)
            for _ in range(within, per_epoch):
                batch = build([next(raws) for _ in range(bs)], epoch, stats)
                if self.include_stats:
                    batch[STATS_KEY] = {"rank": self.rank, "lane": lane, **stats.as_dict()}
                yield batch
            local = (epoch + 1) * per_epoch

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
    ):
        super().__init__()
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad stream config: batch_size={batch_size} rank={rank}/{world_size}")
        self.reader = _SplitReader(root, split)
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.transform, self.masker, self.include_stats = transform, masker, include_stats
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
        build = BatchBuilder(self.transform, self.masker, self.seed, warn)
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
