"""Identity parameters: what stays the same for one synthetic person across poses and lights."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from data_prep.synth.streams import Stream

HAIR_STYLES: tuple[str, ...] = ("short", "long", "bob", "bald", "bun", "curly", "fringe")

# Skin tones (RGB, 0..1) from dark to light; an identity interpolates between two neighbours.
_SKIN_TONES = np.array(
    [
        [0.36, 0.22, 0.15],
        [0.52, 0.34, 0.24],
        [0.68, 0.48, 0.36],
        [0.80, 0.60, 0.48],
        [0.90, 0.72, 0.60],
        [0.96, 0.80, 0.70],
    ],
    dtype=np.float64,
)
_HAIR_COLOURS = np.array(
    [
        [0.06, 0.05, 0.05],  # black
        [0.20, 0.12, 0.07],  # dark brown
        [0.40, 0.25, 0.13],  # brown
        [0.75, 0.58, 0.32],  # blond
        [0.55, 0.22, 0.10],  # red
        [0.62, 0.62, 0.62],  # grey
    ],
    dtype=np.float64,
)
_EYE_COLOURS = np.array(
    [[0.25, 0.15, 0.08], [0.12, 0.08, 0.05], [0.25, 0.45, 0.65], [0.30, 0.45, 0.25], [0.45, 0.35, 0.20]],
    dtype=np.float64,
)
# Hair must stay distinguishable from skin (parsing truth should be visible in the pixels).
MIN_HAIR_SKIN_DISTANCE = 0.22


@dataclass(frozen=True)
class IdentityParams:
    """Shape and appearance of one synthetic person. Lengths are in head units (half face width = 1)."""

    face_width: float
    face_height: float
    jaw_taper: float  # 0 = round jaw, 1 = narrow chin
    skin_rgb: tuple[float, float, float]
    hair_style: str
    hair_rgb: tuple[float, float, float]
    hairline: float  # y of the front hairline (negative = higher forehead)
    eye_rgb: tuple[float, float, float]
    eye_spacing: float
    eye_size: float
    brow_thickness: float
    nose_length: float
    nose_width: float
    lip_width: float
    lip_thickness: float
    lip_rgb: tuple[float, float, float]
    ear_size: float

    def to_json(self) -> dict:
        out = {}
        for name in _FIELD_NAMES:  # not dataclasses.asdict: it deep-copies recursively, 10x slower
            v = getattr(self, name)
            out[name] = round(v, 4) if isinstance(v, float) else [round(c, 4) for c in v] if isinstance(v, tuple) else v
        return out


_FIELD_NAMES = tuple(f.name for f in fields(IdentityParams))


def _rgb(values: np.ndarray) -> tuple[float, float, float]:
    return tuple(min(max(v, 0.0), 1.0) for v in values.tolist())


IDENTITY_STREAM_TAG = 0x1D


def identity_stream(seed: int, identity_id: int) -> Stream:
    """The random stream of one identity: depends only on (seed, identity_id)."""
    return Stream(seed, identity_id, IDENTITY_STREAM_TAG)


def sample_identity(seed: int, identity_id: int) -> IdentityParams:
    """Draw identity ``identity_id`` of dataset seed ``seed`` (same inputs -> same person)."""
    if identity_id < 0:
        raise ValueError(f"identity_id must be >= 0, got {identity_id}")
    rng = identity_stream(seed, identity_id)
    tone = rng.uniform(0, len(_SKIN_TONES) - 1)
    lo = int(tone)
    hi = min(lo + 1, len(_SKIN_TONES) - 1)
    skin = _SKIN_TONES[lo] * (1 - (tone - lo)) + _SKIN_TONES[hi] * (tone - lo)
    skin = skin * rng.uniforms(0.95, 1.05, 3)
    hair = _HAIR_COLOURS[rng.integer(len(_HAIR_COLOURS))] * rng.uniforms(0.85, 1.15, 3)
    hair = _separate_from(np.minimum(hair, 1.0), np.minimum(skin, 1.0))  # colours are >= 0 already
    eye = _EYE_COLOURS[rng.integer(len(_EYE_COLOURS))] * rng.uniforms(0.85, 1.15, 3)
    lip = np.minimum(skin * np.array([1.0, 0.62, 0.62]) * rng.uniform(0.8, 0.95), 1.0)
    lip[0] = min(1.0, lip[0] + 0.08)
    return IdentityParams(
        face_width=rng.uniform(0.9, 1.08),
        face_height=rng.uniform(0.94, 1.08),
        jaw_taper=rng.uniform(0.15, 0.6),
        skin_rgb=_rgb(skin),
        hair_style=rng.choice(HAIR_STYLES),
        hair_rgb=_rgb(hair),
        hairline=rng.uniform(-0.62, -0.48),
        eye_rgb=_rgb(eye),
        eye_spacing=rng.uniform(0.38, 0.45),
        eye_size=rng.uniform(0.85, 1.15),
        brow_thickness=rng.uniform(0.035, 0.07),
        nose_length=rng.uniform(0.85, 1.15),
        nose_width=rng.uniform(0.85, 1.2),
        lip_width=rng.uniform(0.85, 1.15),
        lip_thickness=rng.uniform(0.8, 1.25),
        lip_rgb=_rgb(lip),
        ear_size=rng.uniform(0.9, 1.1),
    )


def _separate_from(colour: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Darken (or, for dark references, lighten) ``colour`` until it is far enough from ``reference``."""
    out = colour.copy()
    for _ in range(20):
        gap = out - reference
        if math.sqrt(float(gap @ gap)) >= MIN_HAIR_SKIN_DISTANCE:
            break
        out = out * 0.8 if reference.mean() > 0.35 else np.clip(out * 1.25 + 0.03, 0, 1)
    return out
