"""The shard reader's tar member reader (``shard_reader.tar_members``) yields what webdataset's
``tar_file_iterator`` (tarfile in stream mode) yields, and fails where it fails, on plain shards and on every
kind of damage or unusual member: cuts at every block and inside blocks, bad checksums, garbage, zero blocks,
directories, long names (GNU and pax), ustar prefixes, metadata members, a start mid-shard."""

from __future__ import annotations

import io
import tarfile

import pytest
from webdataset.tariterators import tar_file_iterator

from pacofr.data.shard_reader import tar_members


def tar_bytes(members: list[tuple[str, bytes]], fmt: int = tarfile.USTAR_FORMAT, dirs: tuple[str, ...] = ()) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def read_all(reader, data: bytes, start: int = 0):
    fh = io.BytesIO(data)
    fh.seek(start)
    got = []
    try:
        for member in reader(fh):
            got.append((member["fname"], member["data"]))
    except Exception as err:  # what the shard reader catches: same type on both sides
        return got, type(err).__name__
    return got, None


def same(data: bytes, start: int = 0) -> None:
    assert read_all(tar_members, data, start) == read_all(tar_file_iterator, data, start)


SAMPLES = [
    (f"{k:04d}.{ext}", bytes([k, n]) * (100 + 37 * k + n))
    for k in range(4)
    for n, ext in enumerate(("jpg", "json", "seg.png"))
]


def test_plain_shard_and_a_start_mid_shard() -> None:
    data = tar_bytes(SAMPLES)
    got, err = read_all(tar_members, data)
    assert err is None and got == SAMPLES
    same(data)
    offset = 0
    for _name, blob in SAMPLES[:6]:
        offset += 512 + -(-len(blob) // 512) * 512
    same(data, offset)


def test_every_cut_of_a_shard() -> None:
    data = tar_bytes(SAMPLES[:6])
    for cut in [*range(0, len(data), 512), *range(7, len(data), 389)]:
        same(data[:cut])


@pytest.mark.parametrize("where", [0, 1, 2, 5])
def test_damaged_headers(where: int) -> None:
    data = bytearray(tar_bytes(SAMPLES))
    offset = 0
    for _name, blob in SAMPLES[:where]:
        offset += 512 + -(-len(blob) // 512) * 512
    for edit in (
        lambda d: d.__setitem__(slice(offset + 148, offset + 149), b"9"),  # checksum digit: not octal
        lambda d: d.__setitem__(slice(offset + 10, offset + 11), b"X"),  # name changed: checksum wrong
        lambda d: d.__setitem__(slice(offset + 124, offset + 125), b"Z"),  # size not octal
        lambda d: d.__setitem__(slice(offset, offset + 512), bytes(512)),  # a zero block
        lambda d: d.__setitem__(slice(offset, offset + 512), b"\x1f\x8b" + bytes(510)),  # gzip magic
        lambda d: d.__setitem__(slice(offset, offset + 512), bytes(range(256)) * 2),  # garbage
    ):
        damaged = bytearray(data)
        edit(damaged)
        same(bytes(damaged))


def test_unusual_members_are_read_as_tarfile_reads_them() -> None:
    long_name = "deep/" * 30 + "0001.jpg"
    same(tar_bytes(SAMPLES[:3], dirs=("d/",)))  # a directory first, then plain members
    same(tar_bytes([*SAMPLES[:3], ("d2", b"")], dirs=()))
    same(tar_bytes([*SAMPLES[:3], (long_name, b"x" * 700), *SAMPLES[3:6]], fmt=tarfile.GNU_FORMAT))
    same(tar_bytes([*SAMPLES[:3], (long_name, b"x" * 700), *SAMPLES[3:6]], fmt=tarfile.PAX_FORMAT))
    same(tar_bytes([*SAMPLES[:3], ("a/" * 60 + "b.jpg", b"y" * 10), *SAMPLES[3:6]]))  # a ustar prefix
    same(tar_bytes([("__meta__", b"m"), *SAMPLES[:3], ("x/__skip__/a.jpg", b"s"), *SAMPLES[3:6]]))
    same(b"")
    same(bytes(1024))
