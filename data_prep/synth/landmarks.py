"""Face-part contours (eyes, brows, nose, lips) and the iBUG-68 / 5-point landmarks taken from them.

Contours and landmarks are evaluated from the same parametric curves, so every landmark lies on
(or inside) the part it names. All points are in the head frame (see ``template3d``); the image
left eye is the subject's right eye (x < 0).

The 68 points are 3D template points projected (as in AFLW2000-3D / 300W-LP "3D" markup): under
yaw the jaw points stay on the jaw rather than sliding to the visible outline, and points of parts
that are turned away or occluded are still given (there is no visibility flag).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_prep.synth.identity import IdentityParams
from data_prep.synth.template3d import Expression, head_axes, jaw_scale, on_surface

EYE_Y = 0.0
BROW_Y = -0.24
NOSE_TOP_Y = -0.04
MOUTH_Y = 0.8


@dataclass(frozen=True)
class FaceGeometry:
    """Head-frame geometry of the facial features for one identity + expression."""

    eye_centres: np.ndarray  # (2, 3): image-left eye, image-right eye
    eyes: list[np.ndarray]  # closed contours (N, 3), same order
    iris_radius: float
    brows: list[np.ndarray]  # polygons, image-left then image-right
    nose: np.ndarray  # points whose hull is the nose region (incl. the tip)
    upper_lip: np.ndarray
    lower_lip: np.ndarray
    mouth: np.ndarray | None  # inner mouth polygon when open
    landmarks68: np.ndarray  # (68, 3)


def _eye_curves(idp: IdentityParams, side: int, closed: bool):
    cx = side * idp.eye_spacing
    w = 0.15 * idp.eye_size
    h = (0.012 if closed else 0.075) * idp.eye_size
    upper = lambda t: (cx - w * np.cos(t), EYE_Y - h * np.sin(t) ** 0.8 - (0.0 if closed else 0.012 * np.sin(2 * t)))
    lower = lambda t: (cx - w * np.cos(t), EYE_Y + 0.75 * h * np.sin(t))
    return cx, upper, lower


def _eye(idp: IdentityParams, side: int, closed: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cx, upper, lower = _eye_curves(idp, side, closed)
    t = np.linspace(0, np.pi, 13)
    ux, uy = upper(t)
    lx, ly = lower(t[::-1][1:-1])
    contour = on_surface(np.concatenate([ux, lx]), np.concatenate([uy, ly]), idp, -0.01)
    # iBUG order per eye: image-left corner, two upper, image-right corner, two lower (right to left)
    tl = np.array([0, np.pi / 3, 2 * np.pi / 3, np.pi])
    ax, ay = upper(tl)
    bx, by = lower(np.array([2 * np.pi / 3, np.pi / 3]))
    marks = on_surface(np.concatenate([ax, bx]), np.concatenate([ay, by]), idp, -0.01)
    centre = on_surface(np.array([cx]), np.array([EYE_Y]), idp, -0.01)[0]
    return contour, marks, centre


def _brow(idp: IdentityParams, side: int, raised: float) -> tuple[np.ndarray, np.ndarray]:
    inner, outer = side * (idp.eye_spacing - 0.17), side * (idp.eye_spacing + 0.2)
    s = np.linspace(0, 1, 9)  # 0 = inner end, 1 = outer end
    u = inner + (outer - inner) * s
    centre = BROW_Y - 0.09 * raised - 0.05 * np.sin(np.pi * (0.3 + 0.7 * s)) + 0.03 * s
    half = idp.brow_thickness * (1.0 - 0.45 * s)
    poly = on_surface(np.concatenate([u, u[::-1]]), np.concatenate([centre - half, (centre + half)[::-1]]), idp, 0.005)
    sm = np.linspace(0, 1, 5)
    um = inner + (outer - inner) * sm
    cm = BROW_Y - 0.09 * raised - 0.05 * np.sin(np.pi * (0.3 + 0.7 * sm)) + 0.03 * sm
    marks = on_surface(um, cm, idp, 0.005)
    if side < 0:  # iBUG brows run from the image left to the image right
        marks = marks[::-1]
    return poly, marks


def _nose(idp: IdentityParams) -> tuple[np.ndarray, np.ndarray]:
    nl, nw = idp.nose_length, idp.nose_width
    tip_y, base_y = 0.47 * nl, 0.55 * nl
    bridge_y = np.linspace(NOSE_TOP_Y, tip_y, 4)
    lift_bridge = np.linspace(0.03, 0.3, 4)
    bridge = on_surface(np.zeros(4), bridge_y, idp, lift_bridge)
    lower_u = np.array([-0.13, -0.065, 0.0, 0.065, 0.13]) * nw
    lower_v = base_y - np.array([0.02, 0.0, -0.01, 0.0, 0.02]) * nl
    lower = on_surface(lower_u, lower_v, idp, np.array([0.1, 0.16, 0.2, 0.16, 0.1]))
    outline_u = np.array([-0.05, -0.07, -0.17 * nw, -0.16 * nw, 0.16 * nw, 0.17 * nw, 0.07, 0.05])
    outline_v = np.array([NOSE_TOP_Y - 0.02, 0.2, tip_y, base_y + 0.01, base_y + 0.01, tip_y, 0.2, NOSE_TOP_Y - 0.02])
    outline = on_surface(outline_u, outline_v, idp, np.array([0.03, 0.08, 0.07, 0.1, 0.1, 0.07, 0.08, 0.03]))
    return np.concatenate([outline, bridge, lower]), np.concatenate([bridge, lower])


def _mouth(idp: IdentityParams, mouth_open: float):
    w = 0.3 * idp.lip_width
    tu, tl = 0.06 * idp.lip_thickness, 0.08 * idp.lip_thickness
    gap = 0.16 * mouth_open
    y0 = MOUTH_Y + 0.4 * gap  # the jaw drops: the mouth centre moves down with the lower lip

    def curves(s):
        r = np.sqrt(np.clip(1 - s**2, 0, None))
        ui = y0 - 0.5 * gap * r
        li = y0 + 0.5 * gap * r
        uo = ui - tu * r**0.7 + 0.018 * np.exp(-((s / 0.18) ** 2))
        lo = li + tl * r**0.9
        return ui, li, uo, lo

    s_out = np.linspace(-1, 1, 17)
    s_in = s_out[1:-1] * 0.92
    ui, li, uo, lo = curves(s_out)
    uii, lii, _, _ = curves(s_in / 0.92)
    xo, xi = s_out * w, s_in * w
    lift = 0.06
    upper_lip = on_surface(np.concatenate([xo, xi[::-1]]), np.concatenate([uo, uii[::-1]]), idp, lift)
    lower_lip = on_surface(np.concatenate([xo, xi[::-1]]), np.concatenate([lo, lii[::-1]]), idp, lift)
    mouth = None
    if gap > 0.012:
        mouth = on_surface(np.concatenate([xi, xi[::-1]]), np.concatenate([uii, lii[::-1]]), idp, lift - 0.01)
    # iBUG 48-59 outer (from the image-left corner, upper lip left to right, lower lip right to left)
    so = np.array([-1, -0.66, -0.33, 0.0, 0.33, 0.66, 1.0, 0.66, 0.33, 0.0, -0.33, -0.66])
    _, _, uo_m, lo_m = curves(so)
    outer_y = np.where(np.arange(12) <= 6, uo_m, lo_m)
    outer_y[0] = outer_y[6] = y0
    # 60-67 inner: corners, three upper (left to right), three lower (right to left)
    si = np.array([-1, -0.5, 0.0, 0.5, 1.0, 0.5, 0.0, -0.5])
    ui_m, li_m, _, _ = curves(si)
    inner_y = np.where(np.arange(8) <= 4, ui_m, li_m)
    marks = on_surface(np.concatenate([so * w, si * 0.92 * w]), np.concatenate([outer_y, inner_y]), idp, lift)
    return upper_lip, lower_lip, mouth, marks


def _jaw_marks(idp: IdentityParams) -> np.ndarray:
    """iBUG 0-16: along the lower face outline from the image-left temple to the image-right one."""
    a, b, _ = head_axes(idp)
    ang = np.linspace(-np.pi * 0.47, np.pi * 0.47, 17)  # angle from straight down
    y = 0.05 + (b * 0.95 - 0.05) * np.cos(ang)
    half_width = a * jaw_scale(y, idp) * np.sqrt(np.clip(1 - (y / b) ** 2, 0, None))
    return on_surface(np.sign(ang) * 0.93 * half_width, y, idp, 0.0)


def face_geometry(idp: IdentityParams, expr: Expression) -> FaceGeometry:
    eye_l, marks_l, centre_l = _eye(idp, -1, expr.eyes_closed)
    eye_r, marks_r, centre_r = _eye(idp, +1, expr.eyes_closed)
    brow_l, bmarks_l = _brow(idp, -1, expr.brows_raised)
    brow_r, bmarks_r = _brow(idp, +1, expr.brows_raised)
    nose_pts, nose_marks = _nose(idp)
    upper_lip, lower_lip, mouth, mouth_marks = _mouth(idp, expr.mouth_open)
    landmarks = np.concatenate([_jaw_marks(idp), bmarks_l, bmarks_r, nose_marks, marks_l, marks_r, mouth_marks])
    assert landmarks.shape == (68, 3)
    return FaceGeometry(
        eye_centres=np.stack([centre_l, centre_r]),
        eyes=[eye_l, eye_r],
        iris_radius=0.062 * idp.eye_size,
        brows=[brow_l, brow_r],
        nose=nose_pts,
        upper_lip=upper_lip,
        lower_lip=lower_lip,
        mouth=mouth,
        landmarks68=landmarks,
    )


def landmarks5_from(landmarks68_px: np.ndarray, eye_centres_px: np.ndarray) -> np.ndarray:
    """ArcFace order: image-left eye centre, image-right eye centre, nose tip, mouth corners (left, right)."""
    return np.stack([eye_centres_px[0], eye_centres_px[1], landmarks68_px[30], landmarks68_px[48], landmarks68_px[54]])
