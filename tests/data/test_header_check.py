"""The shard reader's header check (``_check_raw``: simplejpeg + PNG IHDR via struct) decides every
sample as the PIL-based check it replaced did: same accept/skip, same reason (the wording of
"unreadable (...)" comes from the parser that failed and may differ)."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pacofr.data.format import KEY_IMAGE, KEY_META, KEY_SEG
from pacofr.data.shard_reader import _check_raw, png_header


def pil_check(sample: dict) -> str | None:
    """The previous implementation of ``_check_raw`` (PIL opens both files), the reference."""
    missing = [k for k in (KEY_IMAGE, KEY_SEG, KEY_META) if k not in sample]
    if missing:
        return f"missing {missing}"
    try:
        with Image.open(io.BytesIO(sample[KEY_IMAGE])) as im:
            image_size = im.size
        with Image.open(io.BytesIO(sample[KEY_SEG])) as seg:
            seg_size, seg_mode = seg.size, seg.mode
        json.loads(sample[KEY_META])
    except Exception as err:
        return f"unreadable ({type(err).__name__}: {err})"
    if seg_mode != "L":
        return f"label map has mode {seg_mode}, expected single-channel 'L'"
    if image_size != seg_size:
        return f"image size {image_size} != label map size {seg_size}"
    return None


def encode(array: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


RNG = np.random.default_rng(0)
JPEG = encode(RNG.integers(0, 256, (16, 20, 3), dtype=np.uint8), "JPEG", quality=90)  # 20 wide, 16 high
PNG_L = encode(RNG.integers(0, 19, (16, 20), dtype=np.uint8), "PNG")
META = b'{"source": "x"}'
_buf = io.BytesIO()
Image.fromarray(np.zeros((16, 20), np.uint8)).convert("P").save(_buf, format="PNG")
PNG_P = _buf.getvalue()


def with_crc_broken(png: bytes) -> bytes:
    data = bytearray(png)
    data[8 + 8 + 13] ^= 0xFF  # first byte of the IHDR CRC
    return bytes(data)


def with_filter_method(png: bytes, method: int) -> bytes:
    """IHDR's filter method byte changed, CRC recomputed (a well-formed chunk with an unknown value)."""
    body = bytearray(png[16:29])
    body[11] = method
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(body)))
    return png[:16] + bytes(body) + crc + png[33:]


def with_text_chunk(png: bytes) -> bytes:
    """An ancillary tEXt chunk between IHDR and IDAT (the walk to IDAT must step over it)."""
    body = b"Comment\x00hello"
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    return png[:33] + chunk + png[33:]


CASES = {
    "good": {},
    "jpeg garbage": {KEY_IMAGE: np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes()},
    "jpeg empty": {KEY_IMAGE: b""},
    "jpeg cut inside its headers": {KEY_IMAGE: JPEG[:30]},
    "jpeg cut after start of scan": {KEY_IMAGE: JPEG[: JPEG.index(b"\xff\xda") + 24]},  # decode fails later
    "png garbage": {KEY_SEG: np.random.default_rng(2).integers(0, 256, 300, dtype=np.uint8).tobytes()},
    "png empty": {KEY_SEG: b""},
    "png signature only": {KEY_SEG: PNG_L[:8]},
    "png cut inside IHDR": {KEY_SEG: PNG_L[:20]},
    "png cut before IDAT": {KEY_SEG: PNG_L[:33]},
    "png bad IHDR crc": {KEY_SEG: with_crc_broken(PNG_L)},
    "png unknown filter method": {KEY_SEG: with_filter_method(PNG_L, 1)},
    "png text chunk": {KEY_SEG: with_text_chunk(PNG_L)},
    "png cut inside IDAT": {KEY_SEG: PNG_L[:-20]},  # PIL too reads headers only: decode fails later
    "label map RGB": {KEY_SEG: encode(np.zeros((16, 20, 3), np.uint8), "PNG")},
    "label map 16 bit": {KEY_SEG: encode(np.zeros((16, 20), np.uint16), "PNG")},
    "label map palette": {KEY_SEG: PNG_P},
    "label map 1 bit": {KEY_SEG: encode(np.zeros((16, 20), bool), "PNG")},
    "label map with alpha": {KEY_SEG: encode(np.zeros((16, 20, 2), np.uint8), "PNG")},
    "label map of another size": {KEY_SEG: encode(np.zeros((20, 16), np.uint8), "PNG")},  # transposed
    "jpeg of another size": {KEY_IMAGE: encode(np.zeros((16, 16, 3), np.uint8), "JPEG")},
    "bad json": {KEY_META: b"{not json"},
    "missing label map": {KEY_SEG: None},
    "missing json": {KEY_META: None},
}


def make_sample(changes: dict) -> dict:
    sample = {"__key__": "k", KEY_IMAGE: JPEG, KEY_SEG: PNG_L, KEY_META: META}
    for key, value in changes.items():
        if value is None:
            del sample[key]
        else:
            sample[key] = value
    return sample


def kind_of(reason: str | None) -> str | None:
    """The decision and its reason, without the parser-specific wording of read failures."""
    return reason.split(" (", 1)[0] if reason and reason.startswith("unreadable") else reason


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_decision_and_reason_as_pil(case: str) -> None:
    sample = make_sample(CASES[case])
    expected = pil_check(dict(sample))
    got = _check_raw(sample)
    assert kind_of(got) == kind_of(expected), (got, expected)
    if got is None:
        assert sample["meta"] == json.loads(META)  # the parsed JSON travels with an accepted sample


def test_decisions_cover_accept_and_every_reason() -> None:
    """The cases above exercise each outcome (so the parity test cannot pass vacuously)."""
    kinds = {kind_of(_check_raw(make_sample(c))) for c in CASES.values()}
    assert None in kinds and "unreadable" in kinds
    assert any(k and k.startswith("label map has mode") for k in kinds)
    assert any(k and k.startswith("image size") for k in kinds)
    assert any(k and k.startswith("missing") for k in kinds)


def test_png_header_reads_size_and_mode() -> None:
    assert png_header(PNG_L) == ((20, 16), "L")
    assert png_header(encode(np.zeros((5, 7, 3), np.uint8), "PNG")) == ((7, 5), "RGB")
    with pytest.raises(ValueError, match="CRC"):
        png_header(with_crc_broken(PNG_L))
    with pytest.raises(ValueError, match="not a PNG"):
        png_header(JPEG)
