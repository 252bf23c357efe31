"""Offline face parser that needs no weights: a label template placed by the landmarks, refined by skin colour.

Every part is an ellipse (or band) in a face frame built from the crop's 5 landmarks: origin at the
eyes' midpoint, x along the eye axis, y perpendicular (down), unit = the eye distance. So the
template rotates and scales with the face. Mean proportions are the usual ones (face width about
2.1 eye distances, mouth 1.16 below the eyes, chin about 1.85). Then a skin-colour model sampled on
the cheeks (median and spread in YCrCb) moves face-template pixels that are not skin-coloured (a
fringe) to hair, and hair-template pixels that are skin-coloured (a high forehead) to skin.

Honest limits: shapes are idealised (no real contours for eyes, lips or hair); hair length, hats,
glasses, earrings and necklaces are never produced (labels 6, 9, 15, 18 stay unused); strong
shadows, make-up or skin-coloured backgrounds move the skin/hair border. It exists so the stage runs
end to end offline (tests, demos); use facexlib's BiSeNet for training data.
"""

from __future__ import annotations

import cv2
import numpy as np

from pacofr.data.format import LABEL_IDS

L = LABEL_IDS

# (label, centre (x, y), semi-axes (a, b)) in face-frame units, drawn in this order (later wins).
_BASE_SHAPES = (
    ("cloth", (0.0, 2.95), (2.6, 0.9)),
    ("neck", (0.0, 2.2), (0.62, 1.0)),
    ("hair", (0.0, 0.0), (1.7, 1.9)),
    ("l_ear", (-1.08, 0.45), (0.2, 0.38)),
    ("r_ear", (1.08, 0.45), (0.2, 0.38)),
    ("skin", (0.0, 0.5), (1.05, 1.38)),
)


def _frame(landmarks5: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-pixel face-frame coordinates (x, y) of an S x S crop, and the eye distance in pixels."""
    eyes = landmarks5[:2]
    mid = eyes.mean(axis=0)
    axis = eyes[1] - eyes[0]
    dist = float(np.hypot(*axis))
    if dist < 2.0:
        raise ValueError(f"eye distance {dist:.2f} px is too small to place a parsing template")
    ux = axis / dist
    uy = np.array([-ux[1], ux[0]])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = xx - mid[0], yy - mid[1]
    return (dx * ux[0] + dy * ux[1]) / dist, (dx * uy[0] + dy * uy[1]) / dist, dist


def _to_frame(points: np.ndarray, landmarks5: np.ndarray) -> np.ndarray:
    eyes = landmarks5[:2]
    mid, axis = eyes.mean(axis=0), eyes[1] - eyes[0]
    dist = np.hypot(*axis)
    ux = axis / dist
    uy = np.array([-ux[1], ux[0]])
    d = np.asarray(points, float) - mid
    return np.stack([d @ ux, d @ uy], axis=-1) / dist


def _ellipse(fx: np.ndarray, fy: np.ndarray, centre, axes) -> np.ndarray:
    return ((fx - centre[0]) / axes[0]) ** 2 + ((fy - centre[1]) / axes[1]) ** 2 <= 1.0


class GeometricParser:
    """See module doc. ``skin_tolerance`` is the colour distance (in cheek-spread units) still called skin."""

    name = "geometric"

    def __init__(self, skin_tolerance: float = 3.0):
        self.skin_tolerance = skin_tolerance

    def describe(self) -> dict:
        return {
            "name": self.name,
            "weights": None,
            "method": "landmark-placed label template refined by a cheek-sampled YCrCb skin model",
            "skin_tolerance": self.skin_tolerance,
        }

    def parse_one(self, crop: np.ndarray, landmarks5: np.ndarray) -> np.ndarray:
        size = crop.shape[0]
        fx, fy, _ = _frame(landmarks5, size)
        labels = np.zeros((size, size), np.uint8)
        for name, centre, axes in _BASE_SHAPES:
            labels[_ellipse(fx, fy, centre, axes)] = L[name]
        # Hair only above the ears' middle: below it the template's hair zone is background.
        labels[(labels == L["hair"]) & (fy > 0.5)] = L["background"]

        self._refine_by_skin_colour(crop, fx, fy, labels)

        # Inner parts, placed on the measured landmarks (converted to the face frame).
        f = _to_frame(landmarks5, landmarks5)
        for side, eye in (("l", f[0]), ("r", f[1])):
            labels[_ellipse(fx, fy, (eye[0], eye[1] - 0.3), (0.27, 0.075))] = L[f"{side}_brow"]
            labels[_ellipse(fx, fy, eye, (0.2, 0.085))] = L[f"{side}_eye"]
        nose = f[2]
        labels[_ellipse(fx, fy, (nose[0], nose[1] - 0.22), (0.16, 0.34))] = L["nose"]
        mouth_mid = (f[3] + f[4]) / 2
        half = max(abs(f[4][0] - f[3][0]) / 2, 0.2)
        labels[_ellipse(fx, fy, (mouth_mid[0], mouth_mid[1] - 0.04), (half, 0.09))] = L["u_lip"]
        labels[_ellipse(fx, fy, (mouth_mid[0], mouth_mid[1] + 0.08), (half * 0.85, 0.1))] = L["l_lip"]
        labels[_ellipse(fx, fy, (mouth_mid[0], mouth_mid[1] + 0.02), (half * 0.8, 0.025))] = L["mouth"]

        # Pixels outside the source image (black warp border) are background whatever the template says.
        labels[crop.max(axis=2) == 0] = L["background"]
        return labels

    def _refine_by_skin_colour(self, crop: np.ndarray, fx: np.ndarray, fy: np.ndarray, labels: np.ndarray) -> None:
        ycc = cv2.cvtColor(crop, cv2.COLOR_RGB2YCrCb).astype(np.float32)
        cheeks = _ellipse(np.abs(fx), fy, (0.55, 0.75), (0.2, 0.2))
        sample = ycc[cheeks][:, 1:]
        if len(sample) < 10:
            return
        centre = np.median(sample, axis=0)
        spread = np.maximum(np.median(np.abs(sample - centre), axis=0) * 1.4826, 2.0)
        distance = np.sqrt((((ycc[..., 1:] - centre) / spread) ** 2).sum(axis=-1))
        skin_like = distance <= self.skin_tolerance
        fringe = (labels == L["skin"]) & ~skin_like & (fy < -0.25)
        labels[fringe] = L["hair"]
        forehead = (labels == L["hair"]) & skin_like & (np.abs(fx) < 0.9) & (fy > -1.0)
        labels[forehead] = L["skin"]

    def parse(self, crops: list[np.ndarray], landmarks: list[np.ndarray]) -> list[np.ndarray]:
        return [self.parse_one(c, lm) for c, lm in zip(crops, landmarks)]
