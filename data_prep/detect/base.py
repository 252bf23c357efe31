"""What every face detector returns, and the keep/drop rules applied to its output."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class Face:
    """One detected face in original-image pixels.

    ``box`` is (x0, y0, x1, y1); ``landmarks5`` is (5, 2) in the contract's LANDMARK5 order (eye on
    the image's left, eye on the image's right, nose, mouth corner image-left, image-right).
    """

    box: np.ndarray
    score: float
    landmarks5: np.ndarray
    extra: dict = field(default_factory=dict)

    @property
    def size(self) -> float:
        """Side of the face: the shorter side of its box (what ``--min-face-size`` compares)."""
        return float(min(self.box[2] - self.box[0], self.box[3] - self.box[1]))


class Detector(Protocol):
    name: str

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        """RGB uint8 (H, W, 3) images -> faces per image (a batch may mix sizes)."""
        ...

    def describe(self) -> dict:
        """What the manifest's ``prep.detector`` records (name, weights file, settings)."""
        ...


def select_faces(faces: list[Face], min_score: float, min_size: float, keep: str) -> tuple[list[Face], dict[str, int]]:
    """Keep faces with ``score >= min_score`` and ``size >= min_size``; ``keep='largest'`` then keeps
    only the biggest one. Returns the kept faces (largest first) and the dropped ones counted by reason."""
    if keep not in ("all", "largest"):
        raise ValueError(f"keep must be 'all' or 'largest', got {keep!r}")
    dropped = {"low_score": 0, "too_small": 0, "not_largest": 0}
    kept = []
    for face in faces:
        if face.score < min_score:
            dropped["low_score"] += 1
        elif face.size < min_size:
            dropped["too_small"] += 1
        else:
            kept.append(face)
    # Largest first, ties broken by position so the face order (and so face_index) is deterministic.
    kept.sort(key=lambda f: (-f.size, float(f.box[0]), float(f.box[1])))
    if keep == "largest" and len(kept) > 1:
        dropped["not_largest"] += len(kept) - 1
        kept = kept[:1]
    return kept, {k: v for k, v in dropped.items() if v}
