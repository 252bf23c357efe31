"""Per-shard sample index (``<shard>.idx``): written beside each shard, used to seek to a mid-shard start.

Reading through the index must give exactly what replaying the shard from its top gives; a missing index
(datasets written before indexes) or a bad one falls back to the replay.
"""

from __future__ import annotations

import io
import itertools
import struct
import tarfile
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from data_prep.run import _remove_chunk_outputs
from data_prep.shard_writer import ShardSink
from pacofr.data import shard_reader
from pacofr.data.format import (
    SAMPLE_INDEX_MAGIC,
    decode_sample_index,
    encode_sample_index,
    read_manifest,
    sample_index_path,
)
from pacofr.data.shard_reader import iter_shard
from pacofr.data.stream_stats import StreamStats
from pacofr.data.streams import TrainShardStream
from pacofr.data.transforms import JointTransform

SIZE = 16


def _read(path: Path, expected: int, start: int, stop: int | None = None) -> tuple[list, StreamStats, list[str]]:
    """Everything ``iter_shard`` yields, as comparable tuples, with its stats and warnings."""
    stats, warnings = StreamStats(), []
    out = [
        (i, raw and (raw["__key__"], raw["jpg"], raw["seg.png"], raw["json"]))
        for i, raw in iter_shard(path, expected, stats, warnings.append, start, stop)
    ]
    return out, stats, warnings


def _replay(path: Path, expected: int, start: int, stop: int | None = None) -> tuple[list, StreamStats, list[str]]:
    """The same read with the index hidden: the pre-index replay path."""
    index = sample_index_path(path)
    hidden = index.with_name(index.name + ".hidden")
    index.rename(hidden)
    try:
        return _read(path, expected, start, stop)
    finally:
        hidden.rename(index)


def _shard(make_shards, tmp_path: Path, count: int = 40) -> tuple[Path, int]:
    root = make_shards(tmp_path, {"train": [count]}, size=SIZE)
    return root / read_manifest(root).split("train").filenames[0], count


def test_each_shard_gets_an_index_of_its_samples_first_headers(tmp_path: Path, make_shards) -> None:
    root = make_shards(tmp_path, {"train": [7, 5, 3], "val": [4]}, size=SIZE)
    manifest = read_manifest(root, count_samples=True)
    for info in manifest.splits.values():
        for name, count in zip(info.filenames, info.shard_lengths):
            shard = root / name
            offsets = decode_sample_index(sample_index_path(shard).read_bytes(), count, shard.stat().st_size)
            with tarfile.open(shard) as tar:
                firsts = {}
                for member in tar:
                    firsts.setdefault(member.name.split(".", 1)[0], (member.offset, member.name))
            assert [off for off, _ in firsts.values()] == list(offsets)
            assert all(n.endswith(".jpg") for _, n in firsts.values())
    assert not list(root.glob(".*.tmp")), "no temp file left behind"


@pytest.mark.parametrize(("start", "stop"), [(1, None), (2, 5), (13, None), (39, None), (20, 21), (0, 7)])
def test_seeking_yields_exactly_what_replaying_yields(
    tmp_path: Path, make_shards, start: int, stop: int | None
) -> None:
    shard, count = _shard(make_shards, tmp_path)
    seek = _read(shard, count, start, stop)
    replay = _replay(shard, count, start, stop)
    assert seek == replay
    items, stats, warnings = seek
    assert [i for i, _ in items] == list(range(start, stop if stop is not None else count))
    assert stats.samples_read == len(items) and not warnings


def _bytes_before_first_sample(monkeypatch, path: Path, expected: int, start: int) -> int:
    """Bytes read from files ``shard_reader`` opens (shard and index) until ``iter_shard`` yields its first sample."""
    read = [0]

    class Counting(io.FileIO):
        def readinto(self, buffer):  # every read of a raw FileIO ends here
            n = super().readinto(buffer)
            read[0] += n or 0
            return n

    monkeypatch.setattr(shard_reader, "open", lambda p, mode="rb": io.BufferedReader(Counting(p)), raising=False)
    first = next(iter_shard(path, expected, StreamStats(), lambda m: None, start))
    monkeypatch.undo()
    assert first[0] == start
    return read[0]


def test_index_skips_reading_the_samples_before_start(tmp_path: Path, make_shards, monkeypatch) -> None:
    shard, count = _shard(make_shards, tmp_path, 60)
    start = 50
    offset = decode_sample_index(sample_index_path(shard).read_bytes(), count, shard.stat().st_size)[start]
    seek = _bytes_before_first_sample(monkeypatch, shard, count, start)
    sample_index_path(shard).unlink()
    replay = _bytes_before_first_sample(monkeypatch, shard, count, start)
    assert replay >= offset, "the replay reads every sample before start"
    assert seek < offset // 4, f"with the index: {seek} bytes read before sample {start}, at byte {offset}"


def _bad_indexes(data: bytes, count: int, size: int) -> dict[str, bytes]:
    offsets = list(decode_sample_index(data, count, size))
    return {
        "empty": b"",
        "short": data[:-5],
        "bad_magic": b"NOTANIDX" + data[8:],
        "fewer_samples": encode_sample_index(offsets[:-1], size),
        "other_shard_size": encode_sample_index(offsets, size + 512),
        "unaligned": encode_sample_index([offsets[0]] + [o + 7 for o in offsets[1:]], size),
        "decreasing": encode_sample_index(offsets[::-1], size),
        "past_the_end": encode_sample_index(offsets[:-1] + [size], size),
        "not_a_header": encode_sample_index([offsets[0]] + [o + 512 for o in offsets[1:]], size),
    }


def test_bad_index_falls_back_to_replay_with_the_same_results(tmp_path: Path, make_shards) -> None:
    shard, count = _shard(make_shards, tmp_path, 20)
    index = sample_index_path(shard)
    good = index.read_bytes()
    reference = {start: _replay(shard, count, start) for start in (3, 17)}
    assert good[:8] == SAMPLE_INDEX_MAGIC
    for name, data in _bad_indexes(good, count, shard.stat().st_size).items():
        index.write_bytes(data)
        shard_reader._warned_bad_index.discard(str(shard))
        for n, start in enumerate((3, 17)):
            items, stats, warnings = _read(shard, count, start)
            assert (items, stats) == reference[start][:2], name
            if n == 0:  # warned about once per shard, then silent
                assert len(warnings) == 1 and "ignoring the sample index" in warnings[0], (name, warnings)
            else:
                assert warnings == [], name


def test_truncated_and_corrupt_shards_are_handled_as_without_index(tmp_path: Path, make_shards, corrupt_shard) -> None:
    for mode in ("truncate", "garbage", "missing_key"):
        shard, count = _shard(make_shards, tmp_path / mode, 20)
        corrupt_shard(shard, mode, index=4)  # rewrites the shard but leaves its (now stale) index
        for start in (2, 10):
            seek, replay = _read(shard, count, start), _replay(shard, count, start)
            assert seek[:2] == replay[:2], (mode, start)
        problems = _read(shard, count, 2)[1]  # the damage (at sample 4 or past 60%) lies after sample 2
        assert problems.truncated_shards + problems.missing_keys + problems.unreadable_samples >= 1, mode


def test_dataset_without_indexes_still_reads(tmp_path: Path, make_shards) -> None:
    root = make_shards(tmp_path, {"train": [7, 5], "val": [3]}, size=SIZE)
    with_index = {start: _read(root / "train-000000.tar", 7, start) for start in (0, 4)}
    for index in root.glob("*.idx"):
        index.unlink()
    manifest = read_manifest(root, count_samples=True)
    assert "sample_index" not in manifest.to_json() and manifest.split("train").shard_lengths == [7, 5]
    for start, expected in with_index.items():
        assert _read(root / "train-000000.tar", 7, start) == expected  # and no warning: a missing index is normal


def test_writer_skips_the_index_when_keys_would_group_differently(tmp_path: Path, make_shards) -> None:
    root = make_shards(tmp_path / "src", {"train": [2]}, size=SIZE)
    with tarfile.open(root / "train-000000.tar") as tar:
        payload = {m.name.split(".", 1)[1]: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]
    with ShardSink(tmp_path, "train", max_per_shard=10, prefix="c00000") as sink:
        for key in ("a", "a", "b"):
            sink.write(key, payload["jpg"], payload["seg.png"], {"x": 1})
    assert (tmp_path / "train-c00000-000000.tar").is_file()
    assert not (tmp_path / "train-c00000-000000.tar.idx").exists()
    with ShardSink(tmp_path, "train", max_per_shard=10, prefix="c00001") as sink:
        sink.write("a", payload["jpg"], payload["seg.png"], {"x": 1})
    assert (tmp_path / "train-c00001-000000.tar.idx").is_file()
    _remove_chunk_outputs(tmp_path, "c00001")  # a forced rerun of a prep chunk removes the index too
    assert not list(tmp_path.glob("*c00001*"))


def _stream(root: Path, **kw) -> TrainShardStream:
    return TrainShardStream(root, 3, JointTransform(12, train=True), shuffle_buffer=4, **kw)


def _take(stream: TrainShardStream, n: int) -> list[dict]:
    loader = DataLoader(stream, batch_size=None, num_workers=stream.num_workers)
    return list(itertools.islice(iter(loader), n))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kw", [{"num_workers": 2}, {"world_size": 2, "rank": 1}], ids=["2-workers", "rank-1-of-2"])
def test_resumed_train_stream_matches_with_and_without_index(tmp_path: Path, make_shards, monkeypatch, kw) -> None:
    root = make_shards(tmp_path, {"train": [7, 5, 3, 6, 8]}, size=SIZE)
    seeks = []
    real = shard_reader._seek_to_sample
    monkeypatch.setattr(shard_reader, "_seek_to_sample", lambda *a: seeks.append(real(*a)) or seeks[-1])
    bpe = _stream(root, **kw).batches_per_epoch
    total = 2 * bpe + 2
    reference = _take(_stream(root, **kw), total)
    if not kw.get("num_workers"):  # in-process: the spy sees the lanes that begin mid-shard seek
        assert seeks and all(seeks)
    runs = {}
    for indexed in (True, False):
        if not indexed:
            for index in root.glob("*.idx"):
                index.unlink()
        for start in (1, bpe + 1):
            runs[indexed, start] = _take(_stream(root, start_batch=start, **kw), total - start)
    for (indexed, start), resumed in runs.items():
        assert [b["key"] for b in resumed] == [b["key"] for b in reference[start:]], (indexed, start)
        for a, b in zip(resumed, reference[start:]):
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["seg"], b["seg"])


def test_index_layout_is_little_endian_uint64() -> None:
    data = encode_sample_index([0, 1536, 4096], 8192)
    assert data == SAMPLE_INDEX_MAGIC + struct.pack("<QQ", 3, 8192) + struct.pack("<3Q", 0, 1536, 4096)
    assert decode_sample_index(data, 3, 8192) == (0, 1536, 4096)
