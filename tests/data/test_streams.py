"""Train and validation streams: rank/worker balance, per-epoch coverage, corruption, exact resume, validation."""

from __future__ import annotations

import itertools
import logging
import tarfile
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from pacofr.data import shard_reader
from pacofr.data.batch import NO_COVERED_GROUP, MaskResult
from pacofr.data.format import NUM_REGIONS, read_manifest
from pacofr.data.stream_stats import StreamStats
from pacofr.data.streams import SEEK_GAP, STATS_KEY, TrainShardStream, ValShardStream
from pacofr.data.transforms import AugmentConfig, JointTransform

SIZE = 16  # source images are 16 px: decoding stays negligible
OUT = 12


def _stream(root: Path, batch_size: int, **kw) -> TrainShardStream:
    return TrainShardStream(root, batch_size, JointTransform(OUT, train=True), shuffle_buffer=4, **kw)


def _take(stream: TrainShardStream, n: int) -> list[dict]:
    loader = DataLoader(stream, batch_size=None, num_workers=stream.num_workers)
    return list(itertools.islice(iter(loader), n))


def _keys(batches: list[dict]) -> list[str]:
    return [k for b in batches for k in b["key"]]


def _all_keys(root: Path, split: str = "train") -> set[str]:
    """Every key of the split, read straight from the tars (independent of the stream code)."""
    keys = set()
    for name in read_manifest(root).split(split).filenames:
        with tarfile.open(root / name) as tar:
            keys |= {m.name.split(".", 1)[0] for m in tar if m.isfile()}
    return keys


@pytest.mark.timeout(120)
@pytest.mark.parametrize("counts", [[7, 5, 3], [2], [9, 1, 1, 4, 6]], ids=["uneven", "one-shard", "ragged"])
def test_every_rank_yields_the_same_full_batches(tmp_path: Path, make_shards, counts: list[int]) -> None:
    root = make_shards(tmp_path, {"train": counts}, size=SIZE)
    bs = 2
    for world, workers in itertools.product((1, 2, 3), (0, 1, 2)):
        per_rank = {
            _stream(root, bs, rank=r, world_size=world, num_workers=workers).batches_per_epoch for r in range(world)
        }
        assert len(per_rank) == 1, f"world={world} workers={workers}: ranks disagree on batches per epoch {per_rank}"
        (bpe,) = per_rank
        assert bpe == max(1, sum(counts) // (world * bs)), "whole batches of the data, whatever the workers"
        for rank in range(world):
            # two full epochs: the stream really delivers what it promised, with full batches
            batches = _take(_stream(root, bs, rank=rank, world_size=world, num_workers=workers), 2 * bpe)
            assert len(batches) == 2 * bpe
            assert all(len(b["key"]) == bs and b["image"].shape == (bs, 3, OUT, OUT) for b in batches)


@pytest.mark.timeout(120)
def test_each_sample_once_per_epoch_when_counts_divide(tmp_path: Path, make_shards) -> None:
    root = make_shards(tmp_path, {"train": [4, 4, 4, 4, 4, 4, 4, 4]}, size=SIZE)  # 32 samples
    world, workers, bs = 2, 2, 4  # 4 lanes x 8 samples = 2 batches per lane
    for epoch in range(2):
        seen: list[str] = []
        for rank in range(world):
            stream = _stream(root, bs, rank=rank, world_size=world, num_workers=workers)
            assert stream.batches_per_epoch == 4
            stream.start_batch = epoch * stream.batches_per_epoch
            seen += _keys(_take(stream, stream.batches_per_epoch))
        assert len(seen) == 32 and set(seen) == _all_keys(root), f"epoch {epoch}: each sample exactly once"


def test_remainder_is_dropped_or_wrapped_as_documented(tmp_path: Path, make_shards) -> None:
    # One lane, 15 samples, batch 4: 3 batches per epoch, 12 distinct samples, 3 unseen this epoch.
    root = make_shards(tmp_path / "a", {"train": [7, 5, 3]}, size=SIZE)
    stream = _stream(root, 4)
    epoch0 = _keys(_take(stream, stream.batches_per_epoch))
    assert stream.batches_per_epoch == 3 and len(epoch0) == 12 and len(set(epoch0)) == 12
    # Very ragged shards still split evenly: 2 ranks x 4 samples, all 8 distinct.
    root = make_shards(tmp_path / "b", {"train": [7, 1]}, size=SIZE)
    keys = [k for r in range(2) for k in _keys(_take(_stream(root, 2, rank=r, world_size=2), 2))]
    assert len(keys) == 8 and set(keys) == _all_keys(root)
    # Fewer samples than a batch per rank (3 samples, 2 ranks, batch 2): one batch per rank; the lanes wrap
    # around the epoch's sequence, so one sample is in both ranks' batches and every sample is seen.
    root = make_shards(tmp_path / "c", {"train": [3]}, size=SIZE)
    lanes = [_keys(_take(_stream(root, 2, rank=r, world_size=2), 1)) for r in range(2)]
    assert [len(set(lane)) for lane in lanes] == [2, 2] and set(lanes[0] + lanes[1]) == _all_keys(root)


@pytest.mark.timeout(120)
def test_more_workers_than_batches_still_use_the_whole_epoch(tmp_path: Path, make_shards) -> None:
    """Lanes hold whole batches: with 3 batches per epoch and 2 workers, one lane has 2 batches and the other 1
    (then the other way round), and each epoch still reads every sample but the tail of less than a batch."""
    root = make_shards(tmp_path, {"train": [5, 5, 4]}, size=SIZE)  # 14 samples, batch 4: 3 batches, 2 left out
    stream = _stream(root, 4, num_workers=2)
    assert stream.batches_per_epoch == 3
    assert [stream.lane_range(0, lane) for lane in (0, 1)] == [(0, 2), (0, 1)]
    assert [stream.lane_range(1, lane) for lane in (0, 1)] == [(2, 3), (1, 3)]
    for epoch in range(2):
        stream.start_batch = epoch * stream.batches_per_epoch
        keys = _keys(_take(stream, stream.batches_per_epoch))
        assert len(keys) == 12 and len(set(keys)) == 12, f"epoch {epoch}: 12 distinct of 14"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_with_exactly_the_same_samples(tmp_path: Path, make_shards, workers: int) -> None:
    root = make_shards(tmp_path, {"train": [7, 5, 3, 6]}, size=SIZE)
    stream = _stream(root, 3, num_workers=workers)
    bpe = stream.batches_per_epoch
    total = 2 * bpe + 3  # crosses two epoch boundaries
    reference = _take(stream, total)
    for start in (1, bpe - 1, bpe + 2):
        resumed = _take(_stream(root, 3, num_workers=workers, start_batch=start), total - start)
        assert [b["key"] for b in resumed] == [b["key"] for b in reference[start:]], f"start={start}"
        for a, b in zip(resumed, reference[start:]):
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["seg"], b["seg"])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("indexed", [True, False], ids=["sample-index", "no-index"])
def test_resume_reads_one_buffer_whatever_the_position(tmp_path: Path, make_shards, monkeypatch, indexed) -> None:
    """A resumed worker replays the buffer's draws on slot numbers and reads only the slots its buffer then holds
    (in ranges bridging gaps under SEEK_GAP: at most buffer x SEEK_GAP samples), then its first batch: the same
    bound near the start of the epoch and near its end. Without sample indexes each range is read from its
    shard's start (at most a shard per range)."""
    root = make_shards(tmp_path, {"train": [40] * 24}, size=SIZE)  # 960 samples: one lane, 240 batches of 4
    if not indexed:
        for index in root.glob("*.idx"):
            index.unlink()
    grouped = []  # every sample the tar reader grouped, checked or not (the read cost in samples)
    real = shard_reader.group_by_keys

    def counting(*args, **kw):
        for sample in real(*args, **kw):
            grouped.append(1)
            yield sample

    monkeypatch.setattr(shard_reader, "group_by_keys", counting)
    buffer, bs = 8, 4
    for start_batch in (2, 230):  # lane positions 8 and 920 of 960
        grouped.clear()
        stream = _stream(root, bs, start_batch=start_batch)
        stream.shuffle_buffer = buffer
        next(iter(stream))
        checked = buffer * SEEK_GAP + 2 * bs  # the held slots' ranges, then what the batch's draws take in
        assert stream.stats.samples_read <= checked, f"start_batch={start_batch}: {stream.stats.samples_read}"
        # each range groups one sample past its end; without an index, plus its shard's prefix
        bound = checked + buffer + 1 + (0 if indexed else buffer * 40)
        assert len(grouped) <= bound, f"start_batch={start_batch}: read {len(grouped)} samples, bound {bound}"
        assert len(grouped) >= stream.stats.samples_read >= bs, "the counter sees the reads"
        assert len(grouped) < 920 // 2, "far less than replaying the lane up to the position"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_exact_over_bad_samples(tmp_path: Path, make_shards, corrupt_shard, workers: int) -> None:
    """Bad samples keep their slot (positions never shift) and are stood in for by the lane's spares, chosen by
    position: a resumed stream yields the same batches over damaged data too, and never a bad sample."""
    root = make_shards(tmp_path, {"train": [9, 8, 9, 7]}, size=SIZE)
    names = read_manifest(root).split("train").filenames
    bad = {
        corrupt_shard(root / names[0], "garbage", index=1),
        corrupt_shard(root / names[1], "missing_key", index=4),
        corrupt_shard(root / names[2], "bad_jpeg_body", index=3),
    }
    corrupt_shard(root / names[3], "truncate")
    good = _all_keys(root) - bad
    stream = _stream(root, 3, num_workers=workers)
    bpe = stream.batches_per_epoch
    total = 2 * bpe + 2
    reference = _take(stream, total)
    assert set(_keys(reference)) <= good
    for start in (1, bpe - 2, bpe + 3):
        resumed = _take(_stream(root, 3, num_workers=workers, start_batch=start), total - start)
        assert [b["key"] for b in resumed] == [b["key"] for b in reference[start:]], f"start={start}"
        for a, b in zip(resumed, reference[start:]):
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["seg"], b["seg"])


@pytest.mark.timeout(120)
def test_augmentation_does_not_depend_on_worker_count(tmp_path: Path, make_shards) -> None:
    root = make_shards(tmp_path, {"train": [6, 6]}, size=SIZE)
    images: dict[int, dict[str, torch.Tensor]] = {}
    for workers in (0, 2):
        stream = _stream(root, 2, num_workers=workers)
        batches = _take(stream, stream.batches_per_epoch)  # epoch 0 only
        images[workers] = {k: b["image"][i] for b in batches for i, k in enumerate(b["key"])}
    common = set(images[0]) & set(images[2])
    assert len(common) >= 4
    for key in common:
        assert torch.equal(images[0][key], images[2][key]), key


def _stats_of(batches: list[dict]) -> StreamStats:
    latest = {}
    for b in batches:
        record = dict(b[STATS_KEY])
        worker = (record.pop("rank"), record.pop("lane"))
        latest[worker] = StreamStats(**record)
    return sum(latest.values(), StreamStats())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_samples_and_truncated_shard_are_skipped_and_counted(
    tmp_path: Path, make_shards, corrupt_shard, workers: int, caplog
) -> None:
    root = make_shards(tmp_path, {"train": [6, 6, 6, 6]}, size=SIZE)
    names = read_manifest(root).split("train").filenames
    good_keys = _all_keys(root)
    bad = {
        corrupt_shard(root / names[0], "garbage", index=1),
        corrupt_shard(root / names[1], "missing_key", index=2),
        corrupt_shard(root / names[2], "bad_jpeg_body", index=3),
    }
    corrupt_shard(root / names[3], "truncate")
    stream = _stream(root, 2, num_workers=workers)
    with caplog.at_level(logging.WARNING, logger="pacofr.data.stream_stats"):
        batches = _take(stream, 2 * stream.batches_per_epoch)
    assert len(batches) == 2 * stream.batches_per_epoch
    assert all(len(b["key"]) == 2 for b in batches)
    keys = set(_keys(batches))
    assert not keys & bad, "corrupt samples must never reach a batch"
    assert keys <= good_keys
    stats = stream.stats if workers == 0 else _stats_of(batches)
    assert stats.missing_keys >= 1 and stats.unreadable_samples >= 1
    assert stats.decode_errors >= 1 and stats.truncated_shards >= 1
    if workers == 0:
        assert any("truncated" in r.getMessage() for r in caplog.records)


def test_unreadable_split_raises_instead_of_hanging(tmp_path: Path, make_shards) -> None:
    root = make_shards(tmp_path, {"train": [3]}, size=SIZE)
    (root / read_manifest(root).split("train").filenames[0]).write_bytes(b"not a tar at all" * 10)
    with pytest.raises(RuntimeError, match="no readable sample"):
        _take(_stream(root, 2), 1)


def test_worker_count_mismatch_is_a_clear_error(tmp_path: Path, make_shards) -> None:
    root = make_shards(tmp_path, {"train": [4]}, size=SIZE)
    with pytest.raises(RuntimeError, match="num_workers"):
        list(itertools.islice(DataLoader(_stream(root, 2, num_workers=2), batch_size=None), 1))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [0, 2])
def test_validation_sees_each_sample_once_across_ranks(tmp_path: Path, make_shards, workers: int) -> None:
    root = make_shards(tmp_path, {"train": [2], "val": [5, 3, 3]}, size=SIZE)  # 11 val samples
    transform = JointTransform(OUT, train=False, config=AugmentConfig())
    for world in (1, 2, 3):
        valid_keys: list[str] = []
        lengths = set()
        for rank in range(world):
            stream = ValShardStream(root, 2, transform, rank=rank, world_size=world)
            batches = list(DataLoader(stream, batch_size=None, num_workers=workers))
            assert len(batches) == len(stream)
            lengths.add(len(batches))
            for b in batches:
                assert b["valid"].shape == (len(b["key"]),)
                valid_keys += [k for k, v in zip(b["key"], b["valid"].tolist()) if v]
        assert len(lengths) == 1, f"world={world}: ranks run different numbers of val batches {lengths}"
        assert sorted(valid_keys) == sorted(_all_keys(root, "val")), f"world={world}"


def test_validation_pads_corrupt_samples(tmp_path: Path, make_shards, corrupt_shard) -> None:
    root = make_shards(tmp_path, {"train": [2], "val": [4, 4]}, size=SIZE)
    names = read_manifest(root).split("val").filenames
    bad = corrupt_shard(root / names[0], "garbage", index=2)
    corrupt_shard(root / names[1], "truncate")
    stream = ValShardStream(root, 3, JointTransform(OUT, train=False), rank=0, world_size=1)
    batches = list(stream)
    assert len(batches) == len(stream) == 3
    flags = torch.cat([b["valid"] for b in batches])
    valid_keys = [k for b in batches for k, v in zip(b["key"], b["valid"].tolist()) if v]
    assert flags.numel() == 8 and bad not in valid_keys
    assert len(valid_keys) == len(set(valid_keys)) < 8
    assert stream.stats.truncated_shards == 1 and stream.stats.unreadable_samples == 1


class _DtypeRecordingMasker:
    """Masks nothing; records the dtype of every label map it is handed (``label_dtype`` if set)."""

    def __init__(self, label_dtype: torch.dtype | None = None) -> None:
        self.patch_size, self.mask_ratio, self.seen = 4, 0.0, set()
        if label_dtype is not None:
            self.label_dtype = label_dtype

    def __call__(self, seg: torch.Tensor, generator: torch.Generator) -> MaskResult:
        self.seen.add(seg.dtype)
        n = (seg.shape[0] // 4) * (seg.shape[1] // 4)
        return MaskResult(torch.zeros(n, dtype=torch.bool), NO_COVERED_GROUP, torch.zeros(n, NUM_REGIONS))


@pytest.mark.parametrize(("declared", "expected"), [(None, torch.int64), (torch.uint8, torch.uint8)])
def test_batches_stay_uint8_and_maskers_get_their_label_dtype(
    tmp_path: Path, make_shards, declared: torch.dtype | None, expected: torch.dtype
) -> None:
    root = make_shards(tmp_path, {"train": [4]}, size=SIZE)
    masker = _DtypeRecordingMasker(declared)
    batch = next(iter(_stream(root, 2, masker=masker)))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (2, 3, OUT, OUT)
    assert batch["seg"].dtype == torch.uint8 and batch["seg"].shape == (2, OUT, OUT)
    assert batch["image"].is_contiguous(memory_format=torch.channels_last), "collated HWC, viewed as NCHW"
    assert masker.seen == {expected}
