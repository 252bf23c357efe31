"""Write ``pacofr-faces/1`` samples into tar shards, each under a temp name until complete.

Tar members get fixed metadata (mtime 0, root owner, mode 0644) so the same samples always give
byte-identical shards: a chunk that is killed and rerun reproduces what it wrote before.

Beside each shard goes its sample index ``<shard>.idx`` (layout in :mod:`pacofr.data.format`: magic,
sample count, shard size, then the uint64 byte offset of each sample's first tar header), written
like the shard under a temp name, then renamed just before the shard (a reader checks the shard size
recorded in it, so an index beside another version of its shard is ignored). ~8 bytes a sample: 16 KiB
for a 2,000-sample shard.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from pacofr.data.format import KEY_IMAGE, KEY_META, KEY_SEG, encode_sample_index, sample_index_path, shard_name

_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    """RGB uint8 (H, W, 3) -> baseline JPEG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB").save(
        buf, format="JPEG", quality=quality, subsampling=0
    )
    return buf.getvalue()


def encode_label_png(labels: np.ndarray) -> bytes:
    """Label map uint8 (H, W) -> lossless 8-bit greyscale PNG bytes (deterministic for one libpng).

    OpenCV's libpng with deflate level 1 and the run-length strategy: label rows are long runs of a few
    values, which this packs ~30% smaller than Pillow's default and about 1.4x faster.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"label map must be 2-D (H, W), got shape {labels.shape}")
    if labels.dtype != np.uint8:
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise ValueError(f"label values must be in 0..255, got {labels.min()}..{labels.max()}")
        labels = labels.astype(np.uint8)
    ok, png = cv2.imencode(".png", np.ascontiguousarray(labels), _PNG_PARAMS)
    if not ok:
        raise RuntimeError("OpenCV failed to encode a label map as PNG")
    return png.tobytes()


def _add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    tar.addfile(info, io.BytesIO(payload))


class ShardSink:
    """Append samples to ``{split}-[{prefix}-]{index:06d}.tar`` shards of at most ``max_per_shard``.

    A shard is written as ``.<name>.tmp`` and renamed when it is full or on :meth:`close`, so a
    killed writer never leaves a truncated shard under a final name; its sample index ``<name>.idx``
    is renamed into place just before it. ``written`` lists ``(filename, num_samples)`` of the
    finished shards.
    """

    def __init__(self, out_dir: str | os.PathLike[str], split: str, max_per_shard: int = 2000, prefix: str = ""):
        if max_per_shard < 1:
            raise ValueError("max_per_shard must be >= 1")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.split, self.prefix, self.max_per_shard = split, prefix, max_per_shard
        self.written: list[tuple[str, int]] = []
        self._tar: tarfile.TarFile | None = None
        self._count = 0

    def _open(self) -> None:
        name = shard_name(self.split, len(self.written), self.prefix)
        self._final = self.out_dir / name
        self._tmp = self.out_dir / f".{name}.tmp"
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
        self._count = 0
        self._offsets: list[int] = []
        self._last_key: str | None = None
        # a reader groups members into samples by key: a key repeated back to back or one webdataset
        # skips as metadata ("__...__") would number samples unlike the writer, so such a shard gets no index
        self._indexable = True

    def write(self, key: str, jpg: bytes, seg_png: bytes, meta: dict[str, Any]) -> None:
        if "." in key:
            raise ValueError(f"sample key {key!r} must not contain '.' (webdataset splits on it)")
        if self._tar is None:
            self._open()
        assert self._tar is not None
        if key == self._last_key or key.startswith("__"):
            self._indexable = False
        self._last_key = key
        self._offsets.append(self._tar.offset)  # where this sample's first member header goes
        _add_member(self._tar, f"{key}.{KEY_IMAGE}", jpg)
        _add_member(self._tar, f"{key}.{KEY_SEG}", seg_png)
        _add_member(self._tar, f"{key}.{KEY_META}", json.dumps(meta, sort_keys=True).encode())
        self._count += 1
        if self._count >= self.max_per_shard:
            self._finish()

    def _finish(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._tar = None
        with open(self._tmp, "rb") as fh:
            os.fsync(fh.fileno())
        index = sample_index_path(self._final)
        if self._indexable:
            tmp_index = self.out_dir / f".{index.name}.tmp"
            with open(tmp_index, "wb") as fh:
                fh.write(encode_sample_index(self._offsets, self._tmp.stat().st_size))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp_index, index)
        else:
            index.unlink(missing_ok=True)
        os.replace(self._tmp, self._final)
        self.written.append((self._final.name, self._count))

    def close(self) -> list[tuple[str, int]]:
        self._finish()
        return self.written

    def __enter__(self) -> ShardSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
