"""Draw synthetic samples from (seed, index) and write them as ``pacofr-faces/1`` shards.

Sample ``i`` shows identity ``i % identities``; its pose, expression, lighting, accessories and
occluders come from a random stream seeded by (seed, i) alone, so any sample can be rendered on its
own, in any process, and the output does not depend on the worker count. The validation split
holds whole identities (a seeded choice of ``round(identities * val_fraction)`` of them), so no
person appears in both splits and verification pairs can be formed inside each split.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.shard_writer import ShardSink, encode_jpeg, encode_label_png
from data_prep.synth import GENERATOR_VERSION
from data_prep.synth.identity import sample_identity
from data_prep.synth.occluders import OCCLUDER_KINDS
from data_prep.synth.render import Rendered, render
from data_prep.synth.scene import Lighting, Scene
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


def _clipped_normal(rng: np.random.Generator, sd: float, limit: float) -> float:
    return float(np.clip(rng.normal(0, sd), -limit, limit))


def sample_scene(seed: int, index: int, size: int, identity_id: int, occluder_prob: float = 0.25) -> Scene:
    """Everything about sample ``index`` except the identity comes from the (seed, index) stream."""
    rng = np.random.default_rng([int(seed), int(index), 0x5A])
    idp = sample_identity(seed, identity_id)
    mouth_open = 0.0 if rng.random() < 0.6 else float(rng.uniform(0.1, 1.0))
    expression = Expression(
        mouth_open=mouth_open,
        eyes_closed=bool(rng.random() < 0.12),
        brows_raised=0.0 if rng.random() < 0.5 else float(rng.uniform(0, 1)),
    )
    light = np.array([rng.uniform(-0.8, 0.8), rng.uniform(-0.7, 0.3), rng.uniform(0.5, 1.0)])
    light /= np.linalg.norm(light)
    cast = rng.uniform(0.88, 1.12, 3) if rng.random() < 0.3 else np.ones(3)
    lighting = Lighting(tuple(float(c) for c in light), float(rng.uniform(0.35, 0.65)), tuple(float(c) for c in cast))
    occluders = []
    if rng.random() < occluder_prob:
        occluders.append(OCCLUDER_KINDS[int(rng.integers(len(OCCLUDER_KINDS)))])
    return Scene(
        size=size,
        identity=idp,
        yaw=_clipped_normal(rng, 20, 55),
        pitch=_clipped_normal(rng, 9, 25),
        roll=_clipped_normal(rng, 6, 18),
        zoom=float(rng.uniform(0.96, 1.04)),
        shift=(float(rng.uniform(-0.015, 0.015)), float(rng.uniform(-0.015, 0.015))),
        expression=expression,
        lighting=lighting,
        cloth_rgb=tuple(
            float(c)
            for c in np.clip(_CLOTH_COLOURS[rng.integers(len(_CLOTH_COLOURS))] * rng.uniform(0.85, 1.15, 3), 0, 1)
        ),
        cloth_neckline=float(rng.uniform(0.05, 0.45)),
        background=BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))],
        glasses=bool(rng.random() < 0.15),
        earrings=bool(rng.random() < 0.2),
        necklace=bool(rng.random() < 0.15),
        hat=bool(rng.random() < 0.08),
        accessory_rgb=tuple(float(c) for c in _ACCESSORY_COLOURS[rng.integers(len(_ACCESSORY_COLOURS))]),
        hat_rgb=tuple(float(c) for c in rng.uniform(0.05, 0.9, 3)),
        gaze=(float(rng.uniform(-0.04, 0.04)), float(rng.uniform(-0.02, 0.02))),
        occluders=occluders,
        texture_seed=int(rng.integers(2**31)),
    )


def _r(values: np.ndarray) -> list:
    return np.round(np.asarray(values, dtype=np.float64), 3).tolist()


def sample_meta(seed: int, index: int, identity_id: int, scene: Scene, out: Rendered) -> dict[str, Any]:
    counts = np.bincount(out.labels.ravel(), minlength=NUM_LABELS)
    areas = {LABEL_NAMES[i]: round(float(c) / out.labels.size, 5) for i, c in enumerate(counts) if c}
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


def render_sample(seed: int, index: int, size: int, num_identities: int, occluder_prob: float = 0.25):
    """One face: ``(rgb, labels, meta)`` with rgb (S, S, 3) uint8 and labels (S, S) uint8."""
    identity_id = identity_of(index, num_identities)
    scene = sample_scene(seed, index, size, identity_id, occluder_prob)
    out = render(scene)
    return out.rgb, out.labels, sample_meta(seed, index, identity_id, scene, out)


def _encode_chunk(task: tuple[SynthConfig, int, int]) -> list[tuple[int, str, bytes, bytes, dict]]:
    cfg, start, stop = task
    rows = []
    for i in range(start, stop):
        rgb, labels, meta = render_sample(cfg.seed, i, cfg.size, cfg.num_identities, cfg.occluder_prob)
        key = sample_key(meta["source"], meta["face_index"])
        rows.append((i, key, encode_jpeg(rgb, cfg.jpeg_quality), encode_label_png(labels), meta))
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
