"""Shared fixtures: tiny valid ``pacofr-faces/1`` datasets and ways to corrupt them.

``make_shards(root, split_counts={"train": [7, 5, 3]}, size=32, seed=0) -> Path`` writes one
shard per listed count (``train-000000.tar`` holds 7 samples, ...) with ``ShardSink`` and a
manifest with ``write_manifest``. Each sample is a face-like label map (skin ellipse, hair, left
and right brows/eyes/ears, nose, lips) with jittered blob positions, and an image whose colour
encodes the label (``LABEL_PALETTE[label]`` + mild noise), so a test can check pixel/label
alignment after any transform. Sample keys are ``format.sample_key(f"synthetic/{split}/{seed}/{i}", 0)``.

``corrupt_shard(path, mode, index=1)`` damages a shard in place: ``"truncate"`` (cut mid-member),
``"garbage"`` (sample ``index``'s JPEG replaced by random bytes), ``"missing_key"`` (sample
``index`` loses its ``seg.png``), ``"bad_jpeg_body"`` (valid JPEG header, truncated body).
It returns the affected sample key (None for ``truncate``).
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from data_prep.shard_writer import ShardSink, encode_jpeg, encode_label_png
from pacofr.data.format import (
    KEY_IMAGE,
    KEY_SEG,
    LABEL_IDS,
    NUM_LABELS,
    Manifest,
    SplitInfo,
    sample_key,
    write_manifest,
)

# Distinct, well-separated colours per label (l/r pairs differ), used to build the test images.
_rng = np.random.default_rng(1234)
LABEL_PALETTE: np.ndarray = np.stack(
    [_rng.permutation(np.linspace(20, 235, NUM_LABELS)).astype(np.uint8) for _ in range(3)], axis=1
)


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def synthetic_face(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 [S,S,3], labels uint8 [S,S]): a cartoon face; image colour = palette[label] + noise."""
    s = float(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    j = lambda: rng.uniform(-0.03, 0.03) * s  # noqa: E731 - small position jitter
    labels = np.zeros((size, size), np.uint8)
    ids = LABEL_IDS
    labels[yy > 0.85 * s] = ids["cloth"]
    labels[_ellipse(yy, xx, 0.3 * s + j(), 0.5 * s + j(), 0.25 * s, 0.33 * s)] = ids["hair"]
    labels[_ellipse(yy, xx, 0.52 * s + j(), 0.5 * s + j(), 0.32 * s, 0.25 * s)] = ids["skin"]
    # "l_*" parts are drawn on the image's left here (any fixed convention works for the tests)
    for side, cx in (("l", 0.36), ("r", 0.64)):
        labels[_ellipse(yy, xx, 0.36 * s + j(), cx * s + j(), 0.025 * s, 0.08 * s)] = ids[f"{side}_brow"]
        labels[_ellipse(yy, xx, 0.44 * s + j(), cx * s + j(), 0.04 * s, 0.07 * s)] = ids[f"{side}_eye"]
    labels[_ellipse(yy, xx, 0.52 * s + j(), 0.22 * s, 0.07 * s, 0.035 * s)] = ids["l_ear"]
    labels[_ellipse(yy, xx, 0.52 * s + j(), 0.78 * s, 0.07 * s, 0.035 * s)] = ids["r_ear"]
    labels[_ellipse(yy, xx, 0.56 * s + j(), 0.5 * s + j(), 0.06 * s, 0.04 * s)] = ids["nose"]
    labels[_ellipse(yy, xx, 0.68 * s + j(), 0.5 * s + j(), 0.025 * s, 0.1 * s)] = ids["u_lip"]
    labels[_ellipse(yy, xx, 0.72 * s + j(), 0.5 * s + j(), 0.025 * s, 0.09 * s)] = ids["l_lip"]
    noise = rng.integers(-4, 5, size=(size, size, 3))
    image = np.clip(LABEL_PALETTE[labels].astype(np.int32) + noise, 0, 255).astype(np.uint8)
    return image, labels


def _meta(source: str, size: int) -> dict:
    s = float(size)
    return {
        "source": source,
        "face_index": 0,
        "box": [0.0, 0.0, s, s],
        "score": 0.99,
        "landmarks5": [
            [0.36 * s, 0.44 * s],
            [0.64 * s, 0.44 * s],
            [0.5 * s, 0.56 * s],
            [0.4 * s, 0.7 * s],
            [0.6 * s, 0.7 * s],
        ],
        "align_matrix": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
        "parser": "synthetic",
    }


def write_synthetic_dataset(
    root: str | Path, split_counts: dict[str, list[int]] | None = None, size: int = 32, seed: int = 0
) -> Path:
    """Write one shard per count in ``split_counts[split]`` plus ``_info.json``; return ``root``."""
    root = Path(root)
    split_counts = split_counts if split_counts is not None else {"train": [7, 5, 3]}
    rng = np.random.default_rng(seed)
    splits: dict[str, SplitInfo] = {}
    for split, counts in split_counts.items():
        if any(c < 1 for c in counts):
            raise ValueError(f"shard counts must be >= 1 (ShardSink cannot write empty shards): {counts}")
        sink = ShardSink(root, split, max_per_shard=max(counts, default=1))
        i = 0
        for count in counts:
            sink.max_per_shard = count  # the sink closes the shard after exactly `count` samples
            for _ in range(count):
                source = f"synthetic/{split}/{seed}/{i}"
                image, labels = synthetic_face(size, rng)
                sink.write(sample_key(source, 0), encode_jpeg(image), encode_label_png(labels), _meta(source, size))
                i += 1
        written = sink.close()
        splits[split] = SplitInfo(
            num_samples=sum(n for _, n in written),
            filenames=[name for name, _ in written],
            shard_lengths=[n for _, n in written],
        )
    write_manifest(root, Manifest(image_size=size, splits=splits, source="tests/conftest.py", created="test"))
    return root


@pytest.fixture
def make_shards() -> Callable[..., Path]:
    """Factory: ``make_shards(root, split_counts={"train": [7, 5, 3]}, size=32, seed=0) -> root``."""
    return write_synthetic_dataset


def _rewrite_tar(path: Path, edit: Callable[[str, bytes], bytes | None]) -> None:
    """Rewrite a tar, passing each member through ``edit(name, data)`` (None drops the member)."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar if m.isfile()]  # type: ignore[union-attr]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, data in members:
            new = edit(member.name, data)
            if new is None:
                continue
            member.size = len(new)
            tar.addfile(member, io.BytesIO(new))


def corrupt_shard_file(path: str | Path, mode: str, index: int = 1) -> str | None:
    """Damage a shard in place (see the module docstring); return the affected sample key."""
    path = Path(path)
    with tarfile.open(path) as tar:
        keys = list(dict.fromkeys(m.name.split(".", 1)[0] for m in tar if m.isfile()))
    if mode == "truncate":
        size = path.stat().st_size
        with open(path, "r+b") as fh:
            fh.truncate(int(size * 0.6) + 37)  # mid-member, not on a 512-byte block boundary
        return None
    target = keys[index]
    if mode == "garbage":
        garbage = np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes()
        _rewrite_tar(path, lambda n, d: garbage if n == f"{target}.{KEY_IMAGE}" else d)
    elif mode == "missing_key":
        _rewrite_tar(path, lambda n, d: None if n == f"{target}.{KEY_SEG}" else d)
    elif mode == "bad_jpeg_body":
        # keep every header up to the start of scan (SOS) plus a few bytes of entropy-coded data
        _rewrite_tar(path, lambda n, d: d[: d.index(b"\xff\xda") + 24] if n == f"{target}.{KEY_IMAGE}" else d)
    else:
        raise ValueError(f"unknown corruption mode {mode!r}")
    return target


@pytest.fixture
def corrupt_shard() -> Callable[..., str | None]:
    """Factory: ``corrupt_shard(path, mode, index=1)`` with mode truncate | garbage | missing_key | bad_jpeg_body."""
    return corrupt_shard_file


@pytest.fixture
def face_factory() -> Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]]:
    """``face_factory(size, rng) -> (image uint8 [S,S,3], labels uint8 [S,S])`` (see ``synthetic_face``)."""
    return synthetic_face


@pytest.fixture
def label_palette() -> np.ndarray:
    """``LABEL_PALETTE[label] -> RGB``: the colour a label gets in the synthetic images."""
    return LABEL_PALETTE


def timm_from_export(path: str | Path) -> torch.nn.Module:
    """What a user of ``pacofr export`` runs: plain ``timm.create_model`` on the file and its sidecar json."""
    import json

    import timm

    meta = json.loads(Path(path).with_suffix(".json").read_text())
    return timm.create_model(
        meta["model_name"],
        pretrained=True,
        num_classes=0,
        img_size=meta["img_size"],
        pretrained_cfg_overlay={"file": str(path), "num_classes": 0},
    ).eval()


@pytest.fixture
def load_exported() -> Callable[[str | Path], torch.nn.Module]:
    """``load_exported(path) -> timm model``: the timm call ``pacofr export`` prints."""
    return timm_from_export


@pytest.fixture(scope="module")
def fit_faces(tmp_path_factory) -> Path:
    """Tiny shards shared by a module's real ``pacofr fit`` runs (train 2 x 20, val 8, 72 px)."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("faces"), {"train": [20, 20], "val": [8]}, size=72)
