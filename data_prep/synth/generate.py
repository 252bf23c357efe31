"""Draw synthetic samples from (seed, index) and write them as ``pacofr-faces/1`` shards.

Sample ``i`` shows identity ``i % identities``; its pose, expression, lighting, accessories and
occluders come from a random stream seeded by (seed, i) alone, so any sample can be rendered on its
own, in any process, and the output does not depend on the worker count. The validation split
holds whole identities (a seeded choice of ``round(identities * val_fraction)`` of them), so no
person appears in both splits and verification pairs can be formed inside each split.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from data_prep.shard_writer import ShardSink, encode_label_png
from data_prep.synth import GENERATOR_VERSION
from data_prep.synth.identity import sample_identity
from data_prep.synth.occluders import OCCLUDER_KINDS
from data_prep.synth.render import Rendered, render
from data_prep.synth.scene import Lighting, Scene
from data_prep.synth.streams import Stream
from data_prep.synth.template3d import Expression
from pacofr.data.format import LABEL_NAMES, NUM_LABELS, Manifest, SplitInfo, sample_key, write_manifest

_CLOTH_COLOURS = np.array(
    [
        [0.1, 0.1, 0.12],
        [0.85, 0.85, 0.85],
        [0.15, 0.25, 0.5],
        [0.5, 0.1, 0.12],
        [0.2, 0.4, 0.25],
        [0.6, 0.5, 0.35],
        [0.45, 0.45, 0.5],
        [0.7, 0.3, 0.5],
    ]
)
_ACCESSORY_COLOURS = np.array([[0.85, 0.7, 0.3], [0.75, 0.75, 0.78], [0.1, 0.1, 0.1], [0.6, 0.25, 0.2]])
BACKGROUNDS = ("blobs", "gradient", "stripes")
CHUNK_SIZE = 32  # samples per worker task; results are written in index order whatever the workers


@dataclass(frozen=True)
class SynthConfig:
    n: int
    size: int = 256
    seed: int = 0
    identities: int | None = None  # default: max(1, n // 8)
    occluder_prob: float = 0.25
    val_fraction: float = 0.1
    jpeg_quality: int = 95

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if not 32 <= self.size <= 2048:
            raise ValueError(f"size must be in 32..2048, got {self.size}")
        if self.identities is not None and self.identities < 1:
            raise ValueError(f"identities must be >= 1, got {self.identities}")
        if not 0.0 <= self.occluder_prob <= 1.0:
            raise ValueError(f"occluder_prob must be in [0, 1], got {self.occluder_prob}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    @property
    def num_identities(self) -> int:
        return self.identities if self.identities is not None else max(1, self.n // 8)


def identity_of(index: int, num_identities: int) -> int:
    return index % num_identities


def val_identities(seed: int, num_identities: int, val_fraction: float) -> frozenset[int]:
    """The identities held out for validation: a seeded choice, at least one when the fraction is > 0."""
    if val_fraction <= 0 or num_identities < 2:
        return frozenset()
    k = min(num_identities - 1, max(1, round(num_identities * val_fraction)))
    order = np.random.default_rng([int(seed), 0x7A1]).permutation(num_identities)
    return frozenset(int(i) for i in order[:k])


def _clipped_normal(rng: Stream, sd: float, limit: float) -> float:
    return min(max(rng.normal(sd), -limit), limit)


SCENE_STREAM_TAG = 0x5A


def sample_scene(seed: int, index: int, size: int, identity_id: int, occluder_prob: float = 0.25) -> Scene:
    """Everything about sample ``index`` except the identity comes from the (seed, index) stream."""
    rng = Stream(seed, index, SCENE_STREAM_TAG)
    idp = sample_identity(seed, identity_id)
    mouth_open = 0.0 if rng.chance(0.6) else rng.uniform(0.1, 1.0)
    expression = Expression(
        mouth_open=mouth_open,
        eyes_closed=rng.chance(0.12),
        brows_raised=0.0 if rng.chance(0.5) else rng.uniform(0, 1),
    )
    light = (rng.uniform(-0.8, 0.8), rng.uniform(-0.7, 0.3), rng.uniform(0.5, 1.0))
    norm = math.sqrt(sum(c * c for c in light))
    cast = tuple(rng.uniforms(0.88, 1.12, 3).tolist()) if rng.chance(0.3) else (1.0, 1.0, 1.0)
    lighting = Lighting(tuple(c / norm for c in light), rng.uniform(0.35, 0.65), cast)
    occluders = []
    if rng.chance(occluder_prob):
        occluders.append(rng.choice(OCCLUDER_KINDS))
    return Scene(
        size=size,
        identity=idp,
        yaw=_clipped_normal(rng, 20, 55),
        pitch=_clipped_normal(rng, 9, 25),
        roll=_clipped_normal(rng, 6, 18),
        zoom=rng.uniform(0.96, 1.04),
        shift=(rng.uniform(-0.015, 0.015), rng.uniform(-0.015, 0.015)),
        expression=expression,
        lighting=lighting,
        cloth_rgb=tuple(
            min(max(c, 0.0), 1.0)
            for c in (_CLOTH_COLOURS[rng.integer(len(_CLOTH_COLOURS))] * rng.uniforms(0.85, 1.15, 3)).tolist()
        ),
        cloth_neckline=rng.uniform(0.05, 0.45),
        background=rng.choice(BACKGROUNDS),
        glasses=rng.chance(0.15),
        earrings=rng.chance(0.2),
        necklace=rng.chance(0.15),
        hat=rng.chance(0.08),
        accessory_rgb=tuple(_ACCESSORY_COLOURS[rng.integer(len(_ACCESSORY_COLOURS))].tolist()),
        hat_rgb=tuple(rng.uniforms(0.05, 0.9, 3).tolist()),
        gaze=(rng.uniform(-0.04, 0.04), rng.uniform(-0.02, 0.02)),
        occluders=occluders,
        texture_seed=rng.integer(2**31),
    )


def _r(values: np.ndarray) -> list:
    # what np.round(values, 3) computes, without its Python-level wrapper
    return (np.rint(np.asarray(values, dtype=np.float64) * 1000.0) / 1000.0).tolist()


_SPREAD: dict[tuple[int, int], np.ndarray] = {}
assert NUM_LABELS <= 32, "label_counts packs four copies of the label range into 128 histogram bins"


def label_counts(labels: np.ndarray) -> np.ndarray:
    """Pixels per label id (NUM_LABELS,), exact. Label maps are long runs of one value, and counting a
    run into one histogram bin is a chain of dependent increments; adding 32 * (column % 4) first
    spreads neighbours over four bins per label, which counts ~2x faster; the bins are summed back."""
    if labels.shape not in _SPREAD:
        _SPREAD[labels.shape] = np.broadcast_to(
            (np.arange(labels.shape[1]) % 4 * 32).astype(np.uint8), labels.shape
        ).copy()
    spread = cv2.add(labels, _SPREAD[labels.shape])  # labels < 32: no overflow, no collisions
    hist = cv2.calcHist([spread], [0], None, [128], [0, 128]).ravel()  # float32: exact below 2^24 per bin
    return hist.reshape(4, 32).sum(0)[:NUM_LABELS]


def sample_meta(seed: int, index: int, identity_id: int, scene: Scene, out: Rendered) -> dict[str, Any]:
    counts = label_counts(out.labels).tolist()
    areas = {LABEL_NAMES[i]: round(c / out.labels.size, 5) for i, c in enumerate(counts) if c}
    return {
        "source": f"synth://seed={seed}/index={index}",
        "face_index": 0,
        "box": [round(v, 2) for v in out.box],
        "score": 1.0,
        "landmarks5": _r(out.landmarks5),
        "landmarks68": _r(out.landmarks68),
        "align_matrix": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
        "parser": "synthetic-exact",
        "pose": {"yaw": round(scene.yaw, 3), "pitch": round(scene.pitch, 3), "roll": round(scene.roll, 3)},
        "identity": identity_id,
        "identity_params": scene.identity.to_json(),
        "expression": scene.expression.to_json(),
        "lighting": scene.lighting.to_json(),
        "accessories": {
            "glasses": scene.glasses,
            "earrings": scene.earrings,
            "necklace": scene.necklace,
            "hat": scene.hat,
        },
        "occluders": [{"kind": o["kind"], "hidden_regions": o["hidden_regions"]} for o in out.occluders],
        "label_areas": areas,
        "synthetic": True,
    }


def _render_indexed(
    seed: int, index: int, size: int, num_identities: int, occluder_prob: float
) -> tuple[Rendered, dict[str, Any]]:
    identity_id = identity_of(index, num_identities)
    scene = sample_scene(seed, index, size, identity_id, occluder_prob)
    out = render(scene)
    return out, sample_meta(seed, index, identity_id, scene, out)


def render_sample(seed: int, index: int, size: int, num_identities: int, occluder_prob: float = 0.25):
    """One face: ``(rgb, labels, meta)`` with rgb (S, S, 3) uint8 and labels (S, S) uint8."""
    out, meta = _render_indexed(seed, index, size, num_identities, occluder_prob)
    return np.ascontiguousarray(out.rgb), out.labels, meta


def encode_bgr_jpeg(bgr: np.ndarray, quality: int) -> bytes:
    """BGR uint8 -> baseline 4:4:4 JPEG: the same bytes as ``shard_writer.encode_jpeg`` of the RGB image
    (both are libjpeg-turbo with the same settings), without the channel swap and Pillow's overhead."""
    ok, buf = cv2.imencode(
        ".jpg",
        bgr,
        [
            cv2.IMWRITE_JPEG_QUALITY,
            int(quality),
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
        ],
    )
    if not ok:
        raise RuntimeError("OpenCV failed to encode a JPEG")
    return buf.tobytes()


def _encode_chunk(task: tuple[SynthConfig, int, int]) -> list[tuple[int, str, bytes, bytes, dict]]:
    cfg, start, stop = task
    rows = []
    for i in range(start, stop):
        out, meta = _render_indexed(cfg.seed, i, cfg.size, cfg.num_identities, cfg.occluder_prob)
        key = sample_key(meta["source"], meta["face_index"])
        rows.append((i, key, encode_bgr_jpeg(out.bgr, cfg.jpeg_quality), encode_label_png(out.labels), meta))
    return rows


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one core per worker; cv2's own pool would oversubscribe


def _encoded(cfg: SynthConfig, workers: int) -> Iterator[tuple[int, str, bytes, bytes, dict]]:
    tasks = [(cfg, s, min(s + CHUNK_SIZE, cfg.n)) for s in range(0, cfg.n, CHUNK_SIZE)]
    if workers <= 1:
        for task in tasks:
            yield from _encode_chunk(task)
        return
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
        for rows in pool.imap(_encode_chunk, tasks):  # imap keeps task order
            yield from rows


def write_dataset(
    out_dir: str | os.PathLike[str], cfg: SynthConfig, shard_size: int = 2000, workers: int = 1, progress=None
) -> Manifest:
    """Render ``cfg.n`` faces into ``out_dir`` (train/val shards + ``_info.json``); returns the manifest."""
    out_dir = Path(out_dir)
    if (out_dir / "_info.json").exists() or any(out_dir.glob("*.tar")):
        raise FileExistsError(f"{out_dir} already holds a dataset; choose an empty --out folder")
    held_out = val_identities(cfg.seed, cfg.num_identities, cfg.val_fraction)
    sinks = {split: ShardSink(out_dir, split, shard_size) for split in ("train", "val")}
    for done, (_index, key, jpg, png, meta) in enumerate(_encoded(cfg, max(1, workers)), 1):
        split = "val" if meta["identity"] in held_out else "train"
        sinks[split].write(key, jpg, png, meta)
        if progress is not None:
            progress(done, cfg.n)
    splits = {}
    for split, sink in sinks.items():
        written = sink.close()
        splits[split] = SplitInfo(sum(c for _, c in written), [f for f, _ in written], [c for _, c in written])
    manifest = Manifest(
        image_size=cfg.size,
        splits=splits,
        source="synthetic",
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        prep={
            "backend": "synthetic",
            "generator": "data_prep.synth",
            "version": GENERATOR_VERSION,
            "seed": cfg.seed,
            "n": cfg.n,
            "identities": cfg.num_identities,
            "val_identities": sorted(held_out),
            "val_split": "by identity",
            "occluder_prob": cfg.occluder_prob,
            "jpeg_quality": cfg.jpeg_quality,
        },
    )
    write_manifest(out_dir, manifest)
    return manifest
