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


class _PlaneBatch:
    """Collects the face-plane points (u, v, lift) of every part; each ``add`` returns the part's slice."""

    def __init__(self) -> None:
        self.u: list[np.ndarray] = []
        self.v: list[np.ndarray] = []
        self.lift: list[np.ndarray] = []
        self.n = 0

    def add(self, u, v, lift) -> slice:
        u = np.asarray(u, dtype=np.float64)
        n = len(u)
        self.u.append(u)
        self.v.append(np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)))
        self.lift.append(np.broadcast_to(np.asarray(lift, dtype=np.float64), (n,)))
        self.n += n
        return slice(self.n - n, self.n)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.concatenate(self.u), np.concatenate(self.v), np.concatenate(self.lift)


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


_EYE_T = np.linspace(0, np.pi, 13)
_EYE_CONTOUR_UPPER, _EYE_CONTOUR_LOWER = _EYE_T, _EYE_T[::-1][1:-1]
# iBUG order per eye: image-left corner, two upper, image-right corner, two lower (right to left)
_EYE_MARKS_UPPER, _EYE_MARKS_LOWER = (
    np.array([0, np.pi / 3, 2 * np.pi / 3, np.pi]),
    np.array([2 * np.pi / 3, np.pi / 3]),
)


def _eye(batch: _PlaneBatch, idp: IdentityParams, side: int, closed: bool) -> tuple[slice, slice, slice]:
    """Slices of ``batch`` holding the eye contour, its six iBUG marks and its centre."""
    cx, upper, lower = _eye_curves(idp, side, closed)
    ux, uy = upper(_EYE_CONTOUR_UPPER)
    lx, ly = lower(_EYE_CONTOUR_LOWER)
    contour = batch.add(np.concatenate([ux, lx]), np.concatenate([uy, ly]), -0.01)
    ax, ay = upper(_EYE_MARKS_UPPER)
    bx, by = lower(_EYE_MARKS_LOWER)
    marks = batch.add(np.concatenate([ax, bx]), np.concatenate([ay, by]), -0.01)
    centre = batch.add([cx], [EYE_Y], -0.01)
    return contour, marks, centre


_BROW_S = np.linspace(0, 1, 9)  # 0 = inner end, 1 = outer end
_BROW_ARCH = -0.05 * np.sin(np.pi * (0.3 + 0.7 * _BROW_S)) + 0.03 * _BROW_S
_BROW_MARK_S = np.linspace(0, 1, 5)
_BROW_MARK_ARCH = -0.05 * np.sin(np.pi * (0.3 + 0.7 * _BROW_MARK_S)) + 0.03 * _BROW_MARK_S


def _brow(batch: _PlaneBatch, idp: IdentityParams, side: int, raised: float) -> tuple[slice, slice]:
    """Slices of ``batch``: the brow polygon and its five iBUG marks (inner to outer end)."""
    inner, outer = side * (idp.eye_spacing - 0.17), side * (idp.eye_spacing + 0.2)
    u = inner + (outer - inner) * _BROW_S
    centre = BROW_Y - 0.09 * raised + _BROW_ARCH
    half = idp.brow_thickness * (1.0 - 0.45 * _BROW_S)
    poly = batch.add(np.concatenate([u, u[::-1]]), np.concatenate([centre - half, (centre + half)[::-1]]), 0.005)
    marks = batch.add(inner + (outer - inner) * _BROW_MARK_S, BROW_Y - 0.09 * raised + _BROW_MARK_ARCH, 0.005)
    return poly, marks


_NOSE_BRIDGE_T = np.linspace(0, 1, 4)
_NOSE_LIFT = np.concatenate(
    [[0.03, 0.08, 0.07, 0.1, 0.1, 0.07, 0.08, 0.03], np.linspace(0.03, 0.3, 4), [0.1, 0.16, 0.2, 0.16, 0.1]]
)


def _nose(batch: _PlaneBatch, idp: IdentityParams) -> tuple[slice, slice]:
    """Slices of ``batch``: the points whose hull is the nose (outline, bridge, lower edge), and the
    iBUG marks 27-35 (bridge, lower edge), which are the tail of the same run."""
    nl, nw = idp.nose_length, idp.nose_width
    tip_y, base_y = 0.47 * nl, 0.55 * nl
    outline_u = [-0.05, -0.07, -0.17 * nw, -0.16 * nw, 0.16 * nw, 0.17 * nw, 0.07, 0.05]
    outline_v = [NOSE_TOP_Y - 0.02, 0.2, tip_y, base_y + 0.01, base_y + 0.01, tip_y, 0.2, NOSE_TOP_Y - 0.02]
    bridge_v = NOSE_TOP_Y + (tip_y - NOSE_TOP_Y) * _NOSE_BRIDGE_T
    lower_u = [-0.13 * nw, -0.065 * nw, 0.0, 0.065 * nw, 0.13 * nw]
    lower_v = [base_y - 0.02 * nl, base_y, base_y + 0.01 * nl, base_y, base_y - 0.02 * nl]
    u = np.concatenate([outline_u, np.zeros(4), lower_u])
    v = np.concatenate([outline_v, bridge_v, lower_v])
    run = batch.add(u, v, _NOSE_LIFT)
    return run, slice(run.start + 8, run.stop)


_MOUTH_S_OUT = np.linspace(-1, 1, 17)
_MOUTH_S_IN = _MOUTH_S_OUT[1:-1] * 0.92
# iBUG 48-59 outer (from the image-left corner, upper lip left to right, lower lip right to left)
_MOUTH_MARK_OUTER = np.array([-1, -0.66, -0.33, 0.0, 0.33, 0.66, 1.0, 0.66, 0.33, 0.0, -0.33, -0.66])
# 60-67 inner: corners, three upper (left to right), three lower (right to left)
_MOUTH_MARK_INNER = np.array([-1, -0.5, 0.0, 0.5, 1.0, 0.5, 0.0, -0.5])


def _mouth(batch: _PlaneBatch, idp: IdentityParams, mouth_open: float) -> tuple[slice, slice, slice | None, slice]:
    """Slices of ``batch``: upper lip, lower lip, inner mouth (None when closed), iBUG marks 48-67."""
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

    s_out, s_in = _MOUTH_S_OUT, _MOUTH_S_IN
    ui, li, uo, lo = curves(s_out)
    uii, lii, _, _ = curves(s_in / 0.92)
    xo, xi = s_out * w, s_in * w
    lift = 0.06
    upper_lip = batch.add(np.concatenate([xo, xi[::-1]]), np.concatenate([uo, uii[::-1]]), lift)
    lower_lip = batch.add(np.concatenate([xo, xi[::-1]]), np.concatenate([lo, lii[::-1]]), lift)
    mouth = None
    if gap > 0.012:
        mouth = batch.add(np.concatenate([xi, xi[::-1]]), np.concatenate([uii, lii[::-1]]), lift - 0.01)
    so, si = _MOUTH_MARK_OUTER, _MOUTH_MARK_INNER
    _, _, uo_m, lo_m = curves(so)
    outer_y = np.where(np.arange(12) <= 6, uo_m, lo_m)
    outer_y[0] = outer_y[6] = y0
    ui_m, li_m, _, _ = curves(si)
    inner_y = np.where(np.arange(8) <= 4, ui_m, li_m)
    marks = batch.add(np.concatenate([so * w, si * 0.92 * w]), np.concatenate([outer_y, inner_y]), lift)
    return upper_lip, lower_lip, mouth, marks


_JAW_ANGLES = np.linspace(-np.pi * 0.47, np.pi * 0.47, 17)  # angle from straight down


_JAW_LIFT = np.zeros(len(_JAW_ANGLES))


def _jaw_plane(idp: IdentityParams) -> tuple[np.ndarray, np.ndarray]:
    """iBUG 0-16 in the face plane: along the lower face outline from the image-left temple to the
    image-right one (not linear in the parameters: evaluated per face)."""
    a, b, _ = head_axes(idp)
    y = 0.05 + (b * 0.95 - 0.05) * np.cos(_JAW_ANGLES)
    half_width = a * jaw_scale(y, idp) * np.sqrt(np.clip(1 - (y / b) ** 2, 0, None))
    return np.sign(_JAW_ANGLES) * 0.93 * half_width, y


# Shape parameters the features depend on (the face-plane coordinates are linear in them).
_SHAPE_PARAMS = ("eye_spacing", "eye_size", "brow_thickness", "nose_length", "nose_width", "lip_width", "lip_thickness")


@dataclass(frozen=True)
class _Parts:
    """Where each part's points sit in the stacked feature points (same layout for every face)."""

    eyes: tuple[tuple[slice, slice, slice], tuple[slice, slice, slice]]  # (contour, marks, centre) per eye
    brows: tuple[tuple[slice, slice], tuple[slice, slice]]  # (polygon, marks) per brow
    nose: tuple[slice, slice]  # (hull points, marks)
    mouth: tuple[slice, slice, slice | None, slice]  # upper lip, lower lip, inner mouth, marks


def _feature_plane(p, closed: bool, raised: float, mouth_open: float) -> tuple[_PlaneBatch, _Parts]:
    """Face-plane (u, v, lift) of every feature: the parametric definition. ``p`` has the
    ``_SHAPE_PARAMS`` attributes (an IdentityParams, or the unit probes of ``_linear_template``)."""
    batch = _PlaneBatch()
    eyes = (_eye(batch, p, -1, closed), _eye(batch, p, +1, closed))
    brows = (_brow(batch, p, -1, raised), _brow(batch, p, +1, raised))
    nose = _nose(batch, p)
    mouth = _mouth(batch, p, mouth_open)
    return batch, _Parts(eyes, brows, nose, mouth)


class _Probe:
    def __init__(self, values: np.ndarray):
        for name, v in zip(_SHAPE_PARAMS, values):
            setattr(self, name, float(v))


@dataclass(frozen=True)
class _LinearTemplate:
    """uv = basis @ [1, shape params..., brows_raised, mouth_open]; lift is constant."""

    basis: np.ndarray  # (2N, 10): u rows then v rows
    lift: np.ndarray  # (N,)
    parts: _Parts


_TEMPLATES: dict[tuple[bool, bool], _LinearTemplate] = {}


def _linear_template(closed: bool, mouth_inner: bool) -> _LinearTemplate:
    """The feature points are linear in the shape parameters and the expression (for a given eye
    state and whether the inner mouth shows), so once per process we evaluate the parametric
    definition at a base point and one step along each parameter; a face is then one matrix product
    instead of a few hundred tiny numpy calls. (Checked against ``face_geometry_direct`` in the tests.)"""
    if not _TEMPLATES:  # all four variants at once (~30 ms per process), so none is built mid-run
        for variant in ((False, False), (False, True), (True, False), (True, True)):
            _TEMPLATES[variant] = _build_linear_template(*variant)
    return _TEMPLATES[(closed, mouth_inner)]


def _build_linear_template(closed: bool, mouth_inner: bool) -> _LinearTemplate:
    """Evaluate the parametric definition at a base point and one step along each parameter."""
    base = np.ones(len(_SHAPE_PARAMS) + 2)
    base[-2], base[-1] = 0.5, (0.5 if mouth_inner else 0.0)
    steps = np.full(len(base), 1.0)
    steps[-1] = 0.25 if mouth_inner else 0.05  # stay in the same mouth branch (gap > 0.012 or not)

    def evaluate(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, _Parts]:
        batch, parts = _feature_plane(_Probe(theta[:-2]), closed, theta[-2], theta[-1])
        u, v, lift = batch.arrays()
        return np.concatenate([u, v]), lift, parts

    at_base, lift, parts = evaluate(base)
    columns = []
    for k in range(len(base)):
        probe = base.copy()
        probe[k] += steps[k]
        columns.append((evaluate(probe)[0] - at_base) / steps[k])
    slopes = np.stack(columns, 1)
    basis = np.concatenate([(at_base - slopes @ base)[:, None], slopes], 1)
    return _LinearTemplate(basis, lift, parts)


def _shape_vector(idp: IdentityParams, expr: Expression) -> np.ndarray:
    return np.array([1.0, *(getattr(idp, name) for name in _SHAPE_PARAMS), expr.brows_raised, expr.mouth_open])


def face_geometry(idp: IdentityParams, expr: Expression) -> FaceGeometry:
    template = _linear_template(expr.eyes_closed, 0.16 * expr.mouth_open > 0.012)
    uv = template.basis @ _shape_vector(idp, expr)
    n = len(template.lift)
    jaw_u, jaw_v = _jaw_plane(idp)
    pts = on_surface(
        np.concatenate([uv[:n], jaw_u]),
        np.concatenate([uv[n:], jaw_v]),
        idp,
        np.concatenate([template.lift, _JAW_LIFT]),
    )
    return _assemble(pts, n, template.parts, idp)


def _assemble(pts: np.ndarray, n: int, parts, idp: IdentityParams) -> FaceGeometry:
    """FaceGeometry from the surface points: feature points first, the jaw from index ``n`` on."""
    (eye_l, marks_l, centre_l), (eye_r, marks_r, centre_r) = parts.eyes
    (brow_l, bmarks_l), (brow_r, bmarks_r) = parts.brows
    nose_pts, nose_marks = parts.nose
    upper_lip, lower_lip, mouth, mouth_marks = parts.mouth
    # iBUG brows run from the image left to the image right: the image-left brow's marks reversed
    landmarks = np.concatenate(
        [pts[n:], pts[bmarks_l][::-1], pts[bmarks_r], pts[nose_marks], pts[marks_l], pts[marks_r], pts[mouth_marks]]
    )
    assert landmarks.shape == (68, 3)
    return FaceGeometry(
        eye_centres=np.concatenate([pts[centre_l], pts[centre_r]]),
        eyes=[pts[eye_l], pts[eye_r]],
        iris_radius=0.062 * idp.eye_size,
        brows=[pts[brow_l], pts[brow_r]],
        nose=pts[nose_pts],
        upper_lip=pts[upper_lip],
        lower_lip=pts[lower_lip],
        mouth=None if mouth is None else pts[mouth],
        landmarks68=landmarks,
    )


def face_geometry_direct(idp: IdentityParams, expr: Expression) -> FaceGeometry:
    """``face_geometry`` evaluated straight from the parametric definition (slow; for tests)."""
    batch, parts = _feature_plane(idp, expr.eyes_closed, expr.brows_raised, expr.mouth_open)
    u, v, lift = batch.arrays()
    n = len(u)
    jaw_u, jaw_v = _jaw_plane(idp)
    pts = on_surface(np.concatenate([u, jaw_u]), np.concatenate([v, jaw_v]), idp, np.concatenate([lift, _JAW_LIFT]))
    return _assemble(pts, n, parts, idp)


def landmarks5_from(landmarks68_px: np.ndarray, eye_centres_px: np.ndarray) -> np.ndarray:
    """ArcFace order: image-left eye centre, image-right eye centre, nose tip, mouth corners (left, right)."""
    return np.stack([eye_centres_px[0], eye_centres_px[1], landmarks68_px[30], landmarks68_px[48], landmarks68_px[54]])
