"""Identity parameters: what stays the same for one synthetic person across poses and lights."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

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
        out = asdict(self)
        return {
            k: (round(v, 4) if isinstance(v, float) else [round(c, 4) for c in v] if isinstance(v, tuple) else v)
            for k, v in out.items()
        }


def _rgb(values: np.ndarray) -> tuple[float, float, float]:
    clipped = np.clip(values, 0.0, 1.0)
    return (float(clipped[0]), float(clipped[1]), float(clipped[2]))


def identity_rng(seed: int, identity_id: int) -> np.random.Generator:
    """The random stream of one identity: depends only on (seed, identity_id)."""
    return np.random.default_rng([int(seed), int(identity_id), 0x1D])


def sample_identity(seed: int, identity_id: int) -> IdentityParams:
    """Draw identity ``identity_id`` of dataset seed ``seed`` (same inputs -> same person)."""
    if identity_id < 0:
        raise ValueError(f"identity_id must be >= 0, got {identity_id}")
    rng = identity_rng(seed, identity_id)
    tone = rng.uniform(0, len(_SKIN_TONES) - 1)
    lo = int(np.floor(tone))
    hi = min(lo + 1, len(_SKIN_TONES) - 1)
    skin = _SKIN_TONES[lo] * (1 - (tone - lo)) + _SKIN_TONES[hi] * (tone - lo)
    skin = skin * rng.uniform(0.95, 1.05, 3)
    hair = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] * rng.uniform(0.85, 1.15, 3)
    hair = _separate_from(np.clip(hair, 0, 1), np.clip(skin, 0, 1))
    eye = _EYE_COLOURS[rng.integers(len(_EYE_COLOURS))] * rng.uniform(0.85, 1.15, 3)
    lip = np.clip(skin * np.array([1.0, 0.62, 0.62]) * rng.uniform(0.8, 0.95), 0, 1)
    lip[0] = min(1.0, lip[0] + 0.08)
    return IdentityParams(
        face_width=float(rng.uniform(0.9, 1.08)),
        face_height=float(rng.uniform(0.94, 1.08)),
        jaw_taper=float(rng.uniform(0.15, 0.6)),
        skin_rgb=_rgb(skin),
        hair_style=HAIR_STYLES[int(rng.integers(len(HAIR_STYLES)))],
        hair_rgb=_rgb(hair),
        hairline=float(rng.uniform(-0.62, -0.48)),
        eye_rgb=_rgb(eye),
        eye_spacing=float(rng.uniform(0.38, 0.45)),
        eye_size=float(rng.uniform(0.85, 1.15)),
        brow_thickness=float(rng.uniform(0.035, 0.07)),
        nose_length=float(rng.uniform(0.85, 1.15)),
        nose_width=float(rng.uniform(0.85, 1.2)),
        lip_width=float(rng.uniform(0.85, 1.15)),
        lip_thickness=float(rng.uniform(0.8, 1.25)),
        lip_rgb=_rgb(lip),
        ear_size=float(rng.uniform(0.9, 1.1)),
    )


def _separate_from(colour: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Darken (or, for dark references, lighten) ``colour`` until it is far enough from ``reference``."""
    out = colour.copy()
    for _ in range(20):
        if np.linalg.norm(out - reference) >= MIN_HAIR_SKIN_DISTANCE:
            break
        out = out * 0.8 if reference.mean() > 0.35 else np.clip(out * 1.25 + 0.03, 0, 1)
    return out
