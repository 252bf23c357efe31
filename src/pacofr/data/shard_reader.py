"""Reading one ``pacofr-faces/1`` shard: tar members grouped into raw samples, each checked from its headers.

:func:`iter_shard` never raises for bad data. A sample with a missing key or an unreadable image header,
label-map header or JSON comes back as None (counted in :class:`~pacofr.data.stream_stats.StreamStats` and
warned about), so sample indices stay stable; a truncated or unreadable shard ends early. The checks read
headers only (libjpeg-turbo for the JPEG, ``struct`` for the PNG's IHDR): pixels are decoded later, and only
for the samples a batch uses (:mod:`pacofr.data.decode`).

To start mid-shard, :func:`iter_shard` seeks to the sample through the shard's sample index
(``<shard>.idx``, :func:`~pacofr.data.format.decode_sample_index`) when there is one that fits the shard;
otherwise (a dataset written without indexes, or a bad index: warned once per shard) it reads and drops
the samples before ``start``, as before. Either way it yields the same samples under the same indices.
"""

from __future__ import annotations

import contextlib
import json
import re
import struct
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import simplejpeg
from webdataset.tariterators import group_by_keys, tar_file_iterator

from pacofr.data.format import KEY_IMAGE, KEY_META, KEY_SEG, SAMPLE_KEYS, decode_sample_index, sample_index_path
from pacofr.data.stream_stats import StreamStats

RawSample = dict[str, Any]  # {"__key__", "__url__", "jpg", "seg.png", "json", "meta": parsed json}

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


# The numeric fields of a tar header that tarfile.TarInfo.frombuf parses (mode, uid, gid, size, mtime, devmajor,
# devminor; the checksum at 148:156 apart): any it cannot parse makes the header invalid.
_TAR_NUMBERS = ((100, 108), (108, 116), (116, 124), (124, 136), (136, 148), (329, 337), (337, 345))
_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ")  # what tarfile's "r|*" would decompress
_WDS_SKIP_META = re.compile(r"__[^/]*__($|/)")  # webdataset's tar_file_iterator skips these names


def _tar_number(field: bytes) -> int:
    """tarfile's ``nti`` for the octal form (ValueError where it raises InvalidHeaderError)."""
    if field[:1] in (b"\x80", b"\xff"):
        raise ValueError("base-256 number")  # valid for tarfile, rare: left to it
    text = field.split(b"\0", 1)[0]
    if not text.isascii():
        raise ValueError("not ASCII")
    return int(text.strip() or b"0", 8)


def _plain_member(header: bytes) -> tuple[str, int] | None:
    """``(name, size)`` of a header tarfile reads as a plain regular file whose name is its ``name`` field (type
    ``0`` or NUL, no ustar prefix, unsigned checksum right, every numeric field octal), or None: any other header,
    valid or not, is left to tarfile itself."""
    if len(header) != tarfile.BLOCKSIZE or header[156:157] not in (b"0", b"\0") or header[345] != 0:
        return None
    try:
        numbers = [_tar_number(header[a:b]) for a, b in _TAR_NUMBERS]
        checksum = _tar_number(header[148:156])
    except ValueError:
        return None
    if checksum != sum(header) - sum(header[148:156]) + 256:  # the checksum field counted as 8 spaces
        return None
    name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    if header[156:157] == b"\0" and name.endswith("/"):
        return None  # tarfile calls it a directory
    return name, numbers[3]


def tar_members(fh: BinaryIO) -> Iterator[dict[str, Any]]:
    """webdataset's ``tar_file_iterator(fh)`` (``{"fname", "data"}`` of each regular member from ``fh``'s
    position), at a fraction of its cost: plain members (:func:`_plain_member`, all that ``pacofr-prep`` writes)
    are read here from their header with ``struct``-level parsing, ~10x cheaper than ``tarfile``'s ``TarInfo``
    per member (three per sample). The first header that is anything else is judged by ``tarfile``'s own
    ``TarInfo.frombuf``, and what follows is then read exactly as before: an end-of-archive block, or an invalid or
    cut header after the first member ends the archive (as tarfile does); a valid header of another kind (a
    directory, a long name, pax records), the reader's very first header when it is not plain, and a member whose
    data or padding is cut hand the rest of the stream, from that header on, to ``tar_file_iterator``
    (``tests/data/test_tar_members.py`` compares the two on every cut and kind of damage)."""
    first = True
    while True:
        start = fh.tell()
        header = fh.read(tarfile.BLOCKSIZE)
        plain = _plain_member(header) if not (first and header[:5].startswith(_COMPRESSED)) else None
        if plain is None:
            if not first:
                if header.count(0) == tarfile.BLOCKSIZE or len(header) < tarfile.BLOCKSIZE:
                    return  # end of archive / cut header: tarfile stops silently after its first member
                try:
                    tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
                except tarfile.HeaderError:
                    return  # an invalid header after the first: tarfile ends the archive there
            fh.seek(start)
            yield from tar_file_iterator(fh)
            return
        name, size = plain
        data = fh.read(size)
        padding = -size % tarfile.BLOCKSIZE
        if len(data) < size or len(fh.read(padding)) < padding:  # cut: tarfile's own reading from this member on
            fh.seek(start)
            yield from tar_file_iterator(fh)
            return
        first = False
        if "/" not in name and name.startswith("__") and name.endswith("__"):
            continue  # webdataset's metadata members
        if _WDS_SKIP_META.match(name):
            continue
        yield {"fname": name, "data": data}


_warned_bad_index: set[str] = set()  # shards whose bad index this process has warned about


def _seek_to_sample(
    path: Path, fh: BinaryIO, expected: int, size: int, start: int, warn: Callable[[str], None]
) -> bool:
    """Seek ``fh`` to sample ``start`` through the shard's sample index; False (``fh`` left at 0) if it cannot.

    False when there is no index (silently: datasets written before indexes) or it does not fit the
    shard: wrong magic or sample count, a size other than the shard's, bad offsets, or no valid tar
    header at the offset (warned once per shard per process). Never raises.
    """
    index = sample_index_path(path)
    try:
        with open(index, "rb") as ih:
            data = ih.read()
    except FileNotFoundError:
        return False
    except OSError as err:
        problem: Exception = err
    else:
        try:
            offset = decode_sample_index(data, expected, size)[start]
            fh.seek(offset)
            tarfile.TarInfo.frombuf(fh.read(tarfile.BLOCKSIZE), "utf-8", "surrogateescape")  # checks the checksum
            fh.seek(offset)
            return True
        except (OSError, ValueError, IndexError, tarfile.TarError) as err:
            problem = err
    if str(path) not in _warned_bad_index:
        _warned_bad_index.add(str(path))
        warn(f"ignoring the sample index {index} ({problem}); reading shard {path} from its start")
    with contextlib.suppress(OSError):  # the tar reader would meet the same error and end the shard
        fh.seek(0)
    return False


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
    (counted), so indices (used for lane pieces and val rank assignment) stay stable. With a
    valid sample index the reading starts at sample ``start``; without one, samples before
    ``start`` are grouped from tar headers but not checked. Reading ends at ``stop``.
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
            for member in tar_members(fh):
                member["__url__"] = str(path)
                yield member
        except (tarfile.TarError, OSError, EOFError, ValueError) as err:
            stats.truncated_shards += 1
            warn(f"shard {path} is truncated or corrupt ({err}); skipping the rest of it")

    def on_group_error(err: Exception) -> bool:
        stats.unreadable_samples += 1
        warn(f"shard {path}: {err}")
        return True  # continue

    first = 0
    if (
        0 < start < expected
        and size % tarfile.BLOCKSIZE == 0
        and _seek_to_sample(path, fh, expected, size, start, warn)
    ):
        first = start  # the stream now begins at sample `start`
    index = first - 1
    with fh:
        for index, sample in enumerate(group_by_keys(members(), handler=on_group_error), start=first):
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
