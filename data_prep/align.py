"""Align a face by a similarity transform of its 5 landmarks onto a canonical template.

The template is insightface's ArcFace 112x112 five-point template, centred and scaled into an
S x S crop. ``zoom`` sets the framing: 1.0 is ArcFace's tight crop (no hair, no ears); the default
0.76 gives FFHQ's framing (crop side = 1.8 x 2 x eye-to-mouth distance), so hair and ears stay in.
ArcFace's and FFHQ's crop centres coincide (eye midpoint + 0.1 x eye-to-mouth), so only the scale
differs.
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.transform import SimilarityTransform

# insightface arcface_dst, in the contract's LANDMARK5 order (image-left eye first).
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
FFHQ_ZOOM = 0.76


def canonical_template(size: int = 256, zoom: float = FFHQ_ZOOM) -> np.ndarray:
    """The 5 template points (5, 2) in an S x S crop (pixel centres at integer coordinates)."""
    if size < 8 or zoom <= 0:
        raise ValueError(f"bad template: size={size}, zoom={zoom}")
    return (ARCFACE_112 - 56.0) / 112.0 * size * zoom + (size - 1) / 2.0


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; Umeyama) mapping src -> dst.
    Returns the 2x3 matrix."""
    src, dst = np.asarray(src, float), np.asarray(dst, float)
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        tform = SimilarityTransform.from_estimate(src, dst)
        ok = bool(tform)
    else:
        tform = SimilarityTransform()
        ok = tform.estimate(src, dst)
    if not ok or not np.isfinite(tform.params).all():
        raise ValueError("degenerate landmarks: no similarity transform")
    return np.asarray(tform.params[:2], float)


def warp_face(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Warp an RGB image by a 2x3 matrix into an S x S crop. When the warp shrinks the face a lot the
    image is first downscaled with area averaging, so the crop is not aliased."""
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale < 0.5:
        pre = max(scale * 1.5, 1.0 / 16)  # leave the final warp a mild (x1.5) reduction
        h, w = image.shape[:2]
        small = cv2.resize(image, (max(1, round(w * pre)), max(1, round(h * pre))), interpolation=cv2.INTER_AREA)
        fx, fy = small.shape[1] / w, small.shape[0] / h
        matrix = matrix @ np.array([[1 / fx, 0, 0], [0, 1 / fy, 0], [0, 0, 1]])
        image = small
    return cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0)
    )


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (N, 2) points through a 2x3 matrix."""
    points = np.asarray(points, float)
    return points @ matrix[:, :2].T + matrix[:, 2]


def align_face(
    image: np.ndarray, landmarks5: np.ndarray, size: int = 256, zoom: float = FFHQ_ZOOM
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop one face. Returns (crop S x S x 3, the 2x3 matrix original -> crop, landmarks in crop pixels)."""
    matrix = estimate_similarity(landmarks5, canonical_template(size, zoom))
    crop = warp_face(image, matrix, size)
    return crop, matrix, apply_affine(matrix, landmarks5)
