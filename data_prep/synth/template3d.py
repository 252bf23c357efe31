"""The 3D face template and the camera that projects it into the crop.

Head frame (before pose): x points to the image right of a frontal face (the subject's left),
y points down, z points towards the camera; the head centre is the origin and the half face width
is about 1. Face parts are parametric 3D contours on (or in front of) an ellipsoidal head whose
lower half narrows into a jaw. Pose rotates the head (yaw about y, then pitch about x, then roll
about z); a perspective camera projects it. Positive yaw turns the face towards the image right
(the ear on the image right goes out of sight), positive pitch looks up, positive roll
turns the face clockwise on screen.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

from data_prep.synth.identity import IdentityParams

HEAD_DEPTH = 1.1  # z semi-axis of the head ellipsoid
HEAD_HEIGHT = 1.3  # y semi-axis before face_height scaling
CAMERA_DISTANCE = 8.0  # head units; mild perspective
# FFHQ-like placement: the eye line at 42% of the crop height, head units -> pixels at 0.27 * size.
EYE_LINE_FRACTION = 0.42
UNIT_FRACTION = 0.27


@dataclass(frozen=True)
class Expression:
    mouth_open: float  # 0 closed .. 1 wide open
    eyes_closed: bool
    brows_raised: float  # 0 .. 1

    def to_json(self) -> dict:
        return {
            "mouth_open": round(self.mouth_open, 4),
            "eyes_closed": self.eyes_closed,
            "brows_raised": round(self.brows_raised, 4),
        }


def rotation_matrix(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """Head rotation ``R = R_roll @ R_pitch @ R_yaw`` (see the module docstring for signs)."""
    y, p, r = (math.radians(v) for v in (yaw_deg, pitch_deg, roll_deg))
    cy, sy, cp, sp, cr, sr = math.cos(y), math.sin(y), math.cos(p), math.sin(p), math.cos(r), math.sin(r)
    r_yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_pitch = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    r_roll = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return r_roll @ r_pitch @ r_yaw


@dataclass
class Camera:
    """Rotates head-frame points by the pose and projects them (perspective) into crop pixels."""

    rotation: np.ndarray  # (3, 3)
    center: tuple[float, float]  # pixel position of the head origin
    pixels_per_unit: float
    distance: float = CAMERA_DISTANCE

    @classmethod
    def for_crop(cls, size: int, yaw: float, pitch: float, roll: float, zoom: float = 1.0, shift=(0.0, 0.0)):
        return cls(
            rotation_matrix(yaw, pitch, roll),
            (size * (0.5 + shift[0]), size * (EYE_LINE_FRACTION + shift[1])),
            size * UNIT_FRACTION * zoom,
        )

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        return points @ self.rotation.T

    def project_camera(self, cam_points: np.ndarray) -> np.ndarray:
        """Camera-frame points (already rotated) -> (N, 2) pixel coordinates."""
        factor = self.pixels_per_unit * self.distance / (self.distance - cam_points[:, 2])
        return np.stack([self.center[0] + cam_points[:, 0] * factor, self.center[1] + cam_points[:, 1] * factor], 1)

    @functools.cached_property
    def _projection(self) -> np.ndarray:
        """3x4 homogeneous matrix of ``project``: rotation, perspective divide and pixel mapping in one."""
        r, d, f = self.rotation, self.distance, self.pixels_per_unit * self.distance
        cx, cy = self.center
        return np.array(
            [
                [*(f * r[0] - cx * r[2]), cx * d],
                [*(f * r[1] - cy * r[2]), cy * d],
                [*(-r[2]), d],
            ]
        )

    def project(self, points: np.ndarray) -> np.ndarray:
        """Head-frame points (N, 3) -> (N, 2) pixel coordinates (one OpenCV call: 10x cheaper than the
        numpy steps of ``project_camera(to_camera(...))`` for the few dozen points of a part)."""
        points = np.asarray(points, dtype=np.float64)
        if len(points) == 0:
            return np.zeros((0, 2))
        return cv2.perspectiveTransform(points.reshape(-1, 1, 3), self._projection).reshape(-1, 2)

    def facing(self, normals: np.ndarray) -> np.ndarray:
        """z component of rotated unit normals: > 0 means the surface faces the camera."""
        n = normals @ self.rotation.T
        return n[:, 2] / np.maximum(np.sqrt(np.einsum("ij,ij->i", n, n)), 1e-9)


def columns(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """(N, 3) points from coordinate columns (``np.stack(..., 1)`` without its Python-level overhead)."""
    out = np.empty((len(x), 3))
    out[:, 0], out[:, 1], out[:, 2] = x, y, z
    return out


# --- head -----------------------------------------------------------------------------------
def head_axes(idp: IdentityParams) -> tuple[float, float, float]:
    return idp.face_width, HEAD_HEIGHT * idp.face_height, HEAD_DEPTH


def jaw_scale(y: np.ndarray, idp: IdentityParams) -> np.ndarray:
    """Width factor of the head at height y: 1 above the cheeks, narrowing towards the chin."""
    b = head_axes(idp)[1]
    t = np.minimum(np.maximum(y / b, 0.0), 1.0)  # clip, as ufuncs (np.clip's wrapper costs more)
    return 1.0 - idp.jaw_taper * 0.45 * t**2


def surface_z(u: np.ndarray, v: np.ndarray, idp: IdentityParams) -> np.ndarray:
    """z of the front head surface above the face-plane point (u, v)."""
    a, b, c = head_axes(idp)
    inside = 1.0 - (u / (a * jaw_scale(v, idp))) ** 2 - (v / b) ** 2
    return c * np.sqrt(np.maximum(inside, 0.0))


def on_surface(u: np.ndarray, v: np.ndarray, idp: IdentityParams, lift: np.ndarray | float = 0.0) -> np.ndarray:
    """(N, 3) points on the front surface, pushed ``lift`` towards the camera."""
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    return columns(u, v, surface_z(u, v, idp) + lift)


def ellipsoid_normals(points: np.ndarray, idp: IdentityParams) -> np.ndarray:
    a, b, c = head_axes(idp)
    n = points / np.array([a * a, b * b, c * c])
    return n / np.maximum(np.sqrt(np.einsum("ij,ij->i", n, n)), 1e-9)[:, None]


def _sphere_grid(n_lat: int, n_lon: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lat = np.linspace(-np.pi / 2, np.pi / 2, n_lat)[:, None]
    lon = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)[None, :]
    return (
        (np.cos(lat) * np.sin(lon)).ravel(),
        np.broadcast_to(np.sin(lat), (n_lat, n_lon)).ravel(),
        (np.cos(lat) * np.cos(lon)).ravel(),
    )


_UNIT_SPHERE = _sphere_grid(15, 28)


def head_points(idp: IdentityParams, inflate: float = 1.0) -> np.ndarray:
    """Points on the (jaw-narrowed) head surface; their projected hull is the head silhouette."""
    a, b, c = head_axes(idp)
    sx, sy, sz = _UNIT_SPHERE
    y = sy * b * inflate
    return columns(sx * a * inflate * jaw_scale(y, idp), y, sz * c * inflate)


# --- hair -----------------------------------------------------------------------------------
HAIR_INFLATE = 1.08
_HAIR_SIDE_DROP = 0.5  # how much lower the hairline is at the sides than at the front


def _hair_plane_ok(points: np.ndarray, idp: IdentityParams) -> np.ndarray:
    c = HEAD_DEPTH * HAIR_INFLATE
    k = _HAIR_SIDE_DROP / c
    return points[:, 1] < idp.hairline + k * (c - points[:, 2])


def hair_cap_points(idp: IdentityParams) -> np.ndarray:
    """Points of the hair volume above the hairline plane (hull = hair silhouette)."""
    pts = head_points(idp, HAIR_INFLATE)
    if idp.hair_style == "curly":
        pts = pts * np.array([1.06, 1.05, 1.06])
    return pts[_hair_plane_ok(pts, idp)]


@functools.lru_cache(maxsize=8)
def _hairline_angles(n: int) -> tuple[np.ndarray, np.ndarray]:
    phi = np.linspace(-np.pi / 2, np.pi / 2, n)
    return np.sin(phi), np.cos(phi)


def hairline_curve(idp: IdentityParams, n: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """The front hairline on the head surface (left temple -> forehead -> right temple) and its normals.

    The hairline is where the head surface meets the tilted hairline plane
    ``y = hairline + k (ch - z)``; with ``z = c r cos(phi)`` and ``r = sqrt(1 - (y/b)^2)`` that is a
    quadratic in y per angle, solved in closed form (the smaller root: the plane side of the head).
    """
    a, b, c = head_axes(idp)
    ch = HEAD_DEPTH * HAIR_INFLATE
    k = _HAIR_SIDE_DROP / ch
    sin_phi, cos_phi = _hairline_angles(n)
    plane_at_z0 = idp.hairline + k * ch  # y = plane_at_z0 - slope * r
    slope = k * c * cos_phi
    q = (slope / b) ** 2
    y = (plane_at_z0 - slope * np.sqrt(np.maximum(1 + q - (plane_at_z0 / b) ** 2, 0))) / (1 + q)
    r = np.sqrt(np.maximum(1 - (y / b) ** 2, 0))
    pts = columns(a * jaw_scale(y, idp) * r * sin_phi, y, c * r * cos_phi)
    return pts, ellipsoid_normals(pts, idp)


def hair_back_polygon(idp: IdentityParams) -> np.ndarray | None:
    """Hair hanging behind the head (long, bob), or None."""
    w = idp.face_width
    if idp.hair_style == "long":
        xs, ys = [1.12, 1.22, 1.3, 1.35], [-0.3, 0.8, 1.6, 2.4]
    elif idp.hair_style == "bob":
        xs, ys = [1.12, 1.2, 1.22, 1.1], [-0.3, 0.4, 0.85, 1.0]
    else:
        return None
    right = [(x * w, y, -0.35) for x, y in zip(xs, ys)]
    left = [(-x * w, y, -0.35) for x, y in zip(xs, ys)][::-1]
    return np.array(right + left, dtype=np.float64)


def bun_points(idp: IdentityParams) -> np.ndarray:
    sx, sy, sz = _UNIT_SPHERE
    centre = np.array([0.0, -HEAD_HEIGHT * idp.face_height - 0.05, -0.45])
    return np.stack([sx, sy, sz], 1) * 0.38 + centre


_FRINGE_U = np.linspace(-0.8, 0.8, 17)  # in face widths
_FRINGE_BOTTOM = -0.3 + 0.035 * np.sin(np.linspace(0, 6 * np.pi, 17)) + 0.12 * np.abs(_FRINGE_U) ** 2
_FRINGE_U_LOOP = np.concatenate([_FRINGE_U, _FRINGE_U[::-1]])


def fringe_polygon(idp: IdentityParams) -> np.ndarray:
    """Bangs on the forehead: from above the hairline down towards the brows, wavy lower edge
    (top edge left to right, then bottom edge right to left)."""
    v = np.concatenate([np.full(len(_FRINGE_U), idp.hairline - 0.1), _FRINGE_BOTTOM[::-1]])
    return on_surface(_FRINGE_U_LOOP * idp.face_width, v, idp, 0.03)


# --- ears -----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _ear_angles(n: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.sin(t)[:, None], np.cos(t)[:, None]


def ear_outline(idp: IdentityParams, side: int, n: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ear on side +1 (image right) or -1: (outline, outward normal, lobe point)."""
    a = idp.face_width
    centre = np.array([side * (a - 0.02), 0.15, -0.12])
    d = np.array([side * 0.6, 0.0, -0.8])
    sin_t, cos_t = _ear_angles(n)
    es = idp.ear_size
    # slightly egg-shaped: wider at the top
    half_w = 0.16 * es * (1 - 0.15 * sin_t)
    pts = centre + (0.3 * es * sin_t) * np.array([0.0, 1.0, 0.0]) + (half_w * cos_t) * d
    normal = np.array([side * 0.8, 0.0, 0.6])
    lobe = centre + np.array([0, 0.3 * es, 0])
    return pts, normal, lobe


# --- body (not rotated with the head: the torso stays put) -----------------------------------
def neck_polygon(idp: IdentityParams) -> np.ndarray:
    w = 0.5 * idp.face_width
    return np.array(
        [
            (-w, 0.5, -0.3),
            (w, 0.5, -0.3),
            (w * 1.05, 1.8, -0.3),
            (w * 1.2, 3.5, -0.3),
            (-w * 1.2, 3.5, -0.3),
            (-w * 1.05, 1.8, -0.3),
        ]
    )


def cloth_polygon(neckline_depth: float, width: float) -> np.ndarray:
    """Shoulders and chest with a neckline dipping ``neckline_depth`` below the collar."""
    top = 1.72
    return np.array(
        [
            (-0.55, top, -0.3),
            (0.0, top + neckline_depth, -0.3),
            (0.55, top, -0.3),
            (1.5 * width, top + 0.3, -0.3),
            (2.2 * width, top + 0.85, -0.3),
            (2.6 * width, 4.0, -0.3),
            (-2.6 * width, 4.0, -0.3),
            (-2.2 * width, top + 0.85, -0.3),
            (-1.5 * width, top + 0.3, -0.3),
        ]
    )


def necklace_curve(drop: float) -> np.ndarray:
    t = np.linspace(-1, 1, 15)
    return np.stack([0.48 * t, 1.45 + drop * (1 - t**2), np.full_like(t, -0.2)], 1)


def hat_points(idp: IdentityParams, brim: float) -> np.ndarray:
    """Crown (inflated head above a plane) plus a brim ring; convex, so one hull polygon."""
    pts = head_points(idp, 1.14)
    crown = pts[pts[:, 1] < idp.hairline - 0.05]
    ring = _HAT_RING * (1.1 * idp.face_width * brim, 0.0, 1.15 * brim) + (0.0, idp.hairline - 0.02, 0.25 * (brim - 1))
    return np.concatenate([crown, ring])


_HAT_RING_PHI = np.linspace(0, 2 * np.pi, 24, endpoint=False)
_HAT_RING = np.stack([np.sin(_HAT_RING_PHI), np.zeros(24), np.cos(_HAT_RING_PHI)], 1)
