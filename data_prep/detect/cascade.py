"""Offline face detector: scikit-image's LBP frontal-face cascade (its trained XML ships inside the
scikit-image wheel, so nothing is downloaded) plus measured eye centres.

Why this one: OpenCV 5 wheels no longer ship ``CascadeClassifier`` nor the Haar XML files, mediapipe
1.x wheels ship no models (it downloads ``.task`` files) and lost the legacy ``solutions`` API, and
facenet-pytorch (MTCNN weights in its wheel) pins torch < 2.3. scikit-image is already installed.

The cascade gives boxes only. A box's score is the number of raw cascade windows that agree on it,
mapped to [0, 1) (``1 - exp(-n / 5)``, halved when no plausible eye pair is found): real faces
collect a dozen or more, false alarms a handful. The two
eye centres are then measured (darkest blob of the smoothed grey image in a window around where the
box says they are); nose and mouth corners follow from the eyes by mean face proportions. Limits:
frontal, roughly upright faces only (in-plane rotation up to ~15 degrees via the measured eyes);
the nose/mouth landmarks are estimates, not measurements.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from data_prep.detect.base import Face

# Mean positions in a cascade box (fractions of its width, from its top-left corner); measured on
# scikit-image's astronaut and matplotlib's grace_hopper with hand-marked eyes.
EYE_PRIOR = np.array([[0.295, 0.37], [0.71, 0.37]])
# Nose and mouth corners from the eyes, in (along the eye axis, perpendicular) units of the eye
# distance, origin at the eyes' midpoint: the arcface template's proportions.
NOSE_MOUTH_FROM_EYES = np.array([[0.0, 0.575], [-0.41, 1.16], [0.41, 1.16]])


def _group_windows(windows: list[dict], overlap: float = 0.5) -> list[tuple[np.ndarray, int]]:
    """Cluster raw cascade windows: a window joins the first cluster whose median box it overlaps by
    ``overlap`` of the smaller area. Returns (median box x0, y0, x1, y1, window count) per cluster."""
    boxes = np.array([[w["c"], w["r"], w["c"] + w["width"], w["r"] + w["height"]] for w in windows], float)
    boxes = boxes[np.lexsort((boxes[:, 1], boxes[:, 0], -(boxes[:, 2] - boxes[:, 0])))]
    clusters: list[list[np.ndarray]] = []
    for box in boxes:
        for members in clusters:
            head = np.median(np.array(members), axis=0)
            ix = max(0.0, min(box[2], head[2]) - max(box[0], head[0]))
            iy = max(0.0, min(box[3], head[3]) - max(box[1], head[1]))
            smaller = min((box[2] - box[0]) * (box[3] - box[1]), (head[2] - head[0]) * (head[3] - head[1]))
            if ix * iy >= overlap * smaller:
                members.append(box)
                break
        else:
            clusters.append([box])
    return [(np.median(np.array(m), axis=0), len(m)) for m in clusters]


def _darkest_point(grey: np.ndarray, centre: np.ndarray, half: np.ndarray, sigma: float) -> np.ndarray | None:
    """The darkest point of the smoothed image in a window, weighted towards the window centre."""
    h, w = grey.shape
    x0, y0 = np.floor(centre - half).astype(int)
    x1, y1 = np.ceil(centre + half).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 - x0 < 3 or y1 - y0 < 3:
        return None
    patch = ndimage.gaussian_filter(grey[y0:y1, x0:x1], sigma)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    # Soft prior: a point at the window edge must be clearly darker than one at the centre to win.
    d2 = ((xx - centre[0]) / half[0]) ** 2 + ((yy - centre[1]) / half[1]) ** 2
    cost = patch + 0.15 * d2 * (patch.max() - patch.min() + 1e-6)
    iy, ix = np.unravel_index(np.argmin(cost), cost.shape)
    return np.array([x0 + ix, y0 + iy], float)


def landmarks_from_box(grey: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, bool]:
    """Five landmarks for a face box: measured eyes (fallback: the box prior) + estimated nose/mouth.
    Returns (landmarks (5, 2), whether the eyes were measured)."""
    width = box[2] - box[0]
    prior = box[:2] + EYE_PRIOR * width
    half = np.array([0.11, 0.08]) * width
    found = [_darkest_point(grey, p, half, sigma=0.025 * width) for p in prior]
    measured = all(f is not None for f in found)
    eyes = np.array(found) if measured else prior
    if measured:
        # Reject an implausible pair (brow or glasses frame picked): keep the prior instead.
        vec = eyes[1] - eyes[0]
        dist = np.hypot(*vec)
        angle = np.degrees(np.arctan2(vec[1], vec[0]))
        if not (0.25 * width < dist < 0.55 * width and abs(angle) < 25):
            eyes, measured = prior, False
    mid = eyes.mean(axis=0)
    axis = eyes[1] - eyes[0]
    perp = np.array([-axis[1], axis[0]])
    rest = mid + NOSE_MOUTH_FROM_EYES[:, :1] * axis + NOSE_MOUTH_FROM_EYES[:, 1:] * perp
    return np.vstack([eyes, rest]), measured


class CascadeDetector:
    """Offline detector (see module doc). ``max_side`` bounds the image side the cascade scans."""

    name = "skimage_lbp_cascade"

    def __init__(self, max_side: int = 480, scale_factor: float = 1.15, min_window: int = 24, min_windows: int = 3):
        from skimage import data
        from skimage.feature import Cascade

        self.cascade_file = data.lbp_frontal_face_cascade_filename()
        self._cascade = Cascade(self.cascade_file)
        self.max_side, self.scale_factor, self.min_window = max_side, scale_factor, min_window
        self.min_windows = min_windows  # clusters of fewer raw windows are noise, not candidates

    def describe(self) -> dict:
        import skimage

        return {
            "name": self.name,
            "weights": "skimage/data/lbpcascade_frontalface_opencv.xml",
            "scikit_image": skimage.__version__,
            "max_side": self.max_side,
            "scale_factor": self.scale_factor,
            "min_windows": self.min_windows,
            "landmarks": "eyes measured (darkest blob), nose and mouth from eye geometry",
        }

    def _detect_one(self, rgb: np.ndarray) -> list[Face]:
        h, w = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        img = Image.fromarray(rgb).convert("L")
        if scale < 1.0:
            img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
        grey = np.asarray(img, np.float32) / 255.0
        side = min(grey.shape)
        if side < self.min_window:
            return []
        windows = self._cascade.detect_multi_scale(
            img=grey,
            scale_factor=self.scale_factor,
            step_ratio=1,
            min_size=(self.min_window, self.min_window),
            max_size=(side, side),
            min_neighbor_number=1,
            intersection_score_threshold=1.01,  # no merging inside skimage: we count the windows
        )
        faces = []
        for box, count in _group_windows(windows) if windows else []:
            if count < self.min_windows:
                continue
            landmarks, measured = landmarks_from_box(grey, box)
            faces.append(
                Face(
                    box=box / scale,
                    score=float((1.0 - np.exp(-count / 5.0)) * (1.0 if measured else 0.5)),
                    landmarks5=landmarks / scale,
                    extra={"windows": count, "eyes_measured": measured},
                )
            )
        return faces

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        return [self._detect_one(im) for im in images]
