"""Rasterise a synthetic face: the label map (painter's order, far to near) and the material map.

Every pixel's colour comes from its *material* (the label, or a detail inside a label such as the
iris or the teeth) times shading times a texture, so the parsing map matches the pixels exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from data_prep.synth.identity import IdentityParams
from data_prep.synth.landmarks import FaceGeometry, face_geometry, landmarks5_from
from data_prep.synth.occluders import draw_occluder
from data_prep.synth.scene import MATERIAL_IRIS, MATERIAL_LASH, MATERIAL_PUPIL, MATERIAL_TEETH, Scene, side_label
from data_prep.synth.shade import colourise
from data_prep.synth.template3d import (
    Camera,
    bun_points,
    cloth_polygon,
    ear_outline,
    ellipsoid_normals,
    fringe_polygon,
    hair_back_polygon,
    hair_cap_points,
    hairline_curve,
    hat_points,
    head_axes,
    head_points,
    neck_polygon,
    necklace_curve,
)
from pacofr.data.format import LABEL_IDS, LABEL_NAMES, NUM_LABELS

# Whether a near ear is drawn over the cheek: it must face the camera more than in a frontal view.
_EAR_FRONT_FACING = 0.75
_FEATURE_MIN_FACING = 0.05


@dataclass
class Rendered:
    rgb: np.ndarray  # (S, S, 3) uint8
    labels: np.ndarray  # (S, S) uint8
    landmarks68: np.ndarray  # (68, 2) crop pixels
    landmarks5: np.ndarray  # (5, 2)
    box: tuple[float, float, float, float]  # face (skin region) bbox x0, y0, x1, y1
    occluders: list[dict]


def _pts(px: np.ndarray) -> np.ndarray:
    """Pixel coordinates -> int32 with 4 fractional bits (cv2 ``shift=4``) for sub-pixel polygons."""
    return np.round(px * 16).astype(np.int32)


def _fill(canvas: np.ndarray, px: np.ndarray, value: int) -> None:
    cv2.fillPoly(canvas, [_pts(px)], int(value), cv2.LINE_8, 4)


def _hull(px: np.ndarray) -> np.ndarray:
    return cv2.convexHull(px.astype(np.float32))[:, 0].astype(np.float64)


class _Canvas:
    """The label map and the material map, painted together."""

    def __init__(self, size: int):
        self.labels = np.zeros((size, size), np.uint8)
        self.material = np.zeros((size, size), np.uint8)
        self.scratch = np.zeros((size, size), np.uint8)

    def fill(self, px: np.ndarray, label: int, material: int | None = None) -> None:
        _fill(self.labels, px, label)
        _fill(self.material, px, label if material is None else material)

    def mask_of(self, draw) -> np.ndarray:
        """Boolean mask of what ``draw(scratch)`` paints with value 1."""
        self.scratch[:] = 0
        draw(self.scratch)
        return self.scratch.astype(bool)

    def put(self, mask: np.ndarray, label: int, material: int | None = None) -> None:
        np.copyto(self.labels, np.uint8(label), where=mask)  # faster than boolean-index assignment
        np.copyto(self.material, np.uint8(label if material is None else material), where=mask)


def _draw_ear(cv: _Canvas, cam: Camera, scene: Scene, side: int) -> None:
    outline, _, lobe = ear_outline(scene.identity, side)
    label = side_label("ear", side)
    cv.fill(cam.project(outline), label)
    if scene.earrings:
        px = cam.project(lobe[None] + np.array([[0, 0.05, 0.02]]))[0]
        r = max(1.0, 0.045 * cam.pixels_per_unit)
        cv2.circle(cv.labels, _pts(px), int(round(r * 16)), LABEL_IDS["ear_r"], -1, cv2.LINE_8, 4)
        cv2.circle(cv.material, _pts(px), int(round(r * 16)), LABEL_IDS["ear_r"], -1, cv2.LINE_8, 4)


def _features(geo: FaceGeometry) -> list[tuple[np.ndarray, int, bool]]:
    """(points, label, take hull) of the facial features (geometry lists image-left parts first)."""
    parts = [
        (geo.brows[0], side_label("brow", -1), False),
        (geo.brows[1], side_label("brow", 1), False),
        (geo.eyes[0], side_label("eye", -1), False),
        (geo.eyes[1], side_label("eye", 1), False),
        (geo.nose, LABEL_IDS["nose"], True),
        (geo.upper_lip, LABEL_IDS["u_lip"], False),
        (geo.lower_lip, LABEL_IDS["l_lip"], False),
    ]
    if geo.mouth is not None:
        parts.append((geo.mouth, LABEL_IDS["mouth"], False))
    return parts


def rasterise(scene: Scene) -> tuple[_Canvas, Camera, FaceGeometry, dict]:
    """Paint labels + materials far to near; returns the canvas and what the meta needs."""
    idp, size = scene.identity, scene.size
    cam = Camera.for_crop(size, scene.yaw, scene.pitch, scene.roll, scene.zoom, scene.shift)
    body_cam = Camera(np.eye(3), cam.center, cam.pixels_per_unit)  # the torso does not turn with the head
    geo = face_geometry(idp, scene.expression)
    cv = _Canvas(size)
    hair = LABEL_IDS["hair"]

    back = hair_back_polygon(idp)
    if back is not None:
        cv.fill(cam.project(back), hair)
    cv.fill(body_cam.project(neck_polygon(idp)), LABEL_IDS["neck"])
    cv.fill(body_cam.project(cloth_polygon(scene.cloth_neckline, 1.0)), LABEL_IDS["cloth"])
    if scene.necklace:
        chain = _pts(body_cam.project(necklace_curve(0.25 + 0.2 * scene.cloth_neckline)))
        width = max(2, int(round(0.04 * cam.pixels_per_unit)))
        for canvas in (cv.labels, cv.material):
            cv2.polylines(canvas, [chain], False, LABEL_IDS["neck_l"], width, cv2.LINE_8, 4)

    ear_facing = {side: float(cam.facing(ear_outline(idp, side)[1][None])[0]) for side in (-1, 1)}
    for side in (-1, 1):
        if ear_facing[side] < _EAR_FRONT_FACING:
            _draw_ear(cv, cam, scene, side)

    if idp.hair_style != "bald":
        cap = cam.project(hair_cap_points(idp))
        if idp.hair_style == "bun":
            cap = np.concatenate([cap, cam.project(bun_points(idp))])
        outline = _hull(cap)
        if idp.hair_style == "curly":
            outline = _curly(outline, scene.texture_seed, cam.pixels_per_unit)
        cv.fill(outline, hair)

    head_px = _hull(cam.project(head_points(idp)))
    head = cv.mask_of(lambda c: _fill(c, head_px, 1))
    if idp.hair_style == "bald":
        skin = head
    else:
        below = cv.mask_of(lambda c: _fill(c, _below_hairline(cam, idp, size), 1))
        skin = head & below
        cv.put(head & ~below, hair)
    cv.put(skin, LABEL_IDS["skin"])

    for side in (-1, 1):
        if ear_facing[side] >= _EAR_FRONT_FACING:
            _draw_ear(cv, cam, scene, side)

    # facial features, clipped to the visible skin, nearest last
    cv.scratch[:] = 0
    parts = []
    for pts, label, hull in _features(geo):
        if cam.facing(ellipsoid_normals(pts, idp)).mean() < _FEATURE_MIN_FACING:
            continue  # turned away from the camera
        parts.append((float(cam.to_camera(pts)[:, 2].mean()), label, pts, hull))
    for _, label, pts, hull in sorted(parts, key=lambda p: p[0]):
        px = cam.project(pts)
        _fill(cv.scratch, _hull(px) if hull else px, label)
    on_skin = (cv.scratch > 0) & (cv.labels == LABEL_IDS["skin"])
    np.copyto(cv.labels, cv.scratch, where=on_skin)
    np.copyto(cv.material, cv.scratch, where=on_skin)
    _eye_and_mouth_details(cv, cam, geo, scene)
    face_region = skin.copy()

    if idp.hair_style == "fringe":
        fringe_pts = fringe_polygon(idp)
        half = len(fringe_pts) // 2  # top edge left to right, then bottom edge right to left
        facing = cam.facing(ellipsoid_normals(fringe_pts, idp))
        keep = (facing[:half] > 0.1) & (facing[half:][::-1] > 0.1)  # columns seen from the front only
        if keep.sum() >= 2:
            kept = np.concatenate([fringe_pts[:half][keep], fringe_pts[half:][::-1][keep][::-1]])
            fringe = cv.mask_of(lambda c: _fill(c, cam.project(kept), 1)) & head
            cv.put(fringe, hair)
    if scene.glasses:
        _draw_glasses(cv, cam, geo, idp)
    if scene.hat:
        cv.fill(_hull(cam.project(hat_points(idp, 1.15))), LABEL_IDS["hat"])

    rng = np.random.default_rng([scene.texture_seed, 0x0CC])
    occluders = []
    for kind in scene.occluders:
        cv.scratch[:] = 0
        occ = draw_occluder(kind, cv.scratch, rng, cam, idp, geo)
        mask = cv.scratch.astype(bool)
        hidden = _hidden_regions(cv.labels, mask)
        cv.put(mask, occ.label, occ.material)
        occluders.append({"kind": kind, "label": occ.label, "hidden_regions": hidden, "colour": occ.colour})

    x, y, w, h = cv2.boundingRect(face_region.view(np.uint8))
    face_box = (float(x), float(y), float(x + w), float(y + h)) if w else (0.0, 0.0, float(size), float(size))
    extra = {
        "occluders": occluders,
        "box": face_box,
    }
    return cv, cam, geo, extra


def _hidden_regions(before: np.ndarray, mask: np.ndarray) -> list[str]:
    """Names of the labels the occluder covers (at least 2 px and 3% of the label's area)."""
    total = np.bincount(before.ravel(), minlength=NUM_LABELS)
    covered = np.bincount(before[mask], minlength=NUM_LABELS)
    return [LABEL_NAMES[i] for i in range(1, NUM_LABELS) if covered[i] >= 2 and covered[i] >= 0.03 * total[i]]


def _below_hairline(cam: Camera, idp: IdentityParams, size: int) -> np.ndarray:
    """Polygon of everything under the visible front hairline, extended sideways off the crop."""
    pts, normals = hairline_curve(idp)
    keep = cam.facing(normals) > 0.0
    if keep.sum() < 2:
        keep[:] = True
    px = cam.project(pts[keep])
    x_axis = cam.rotation[:2, 0] / max(np.linalg.norm(cam.rotation[:2, 0]), 1e-9)
    down = np.array([-x_axis[1], x_axis[0]])
    far = 4.0 * size
    left_out, right_out = px[0] - x_axis * far, px[-1] + x_axis * far
    return np.concatenate([[left_out + down * far], [left_out], px, [right_out], [right_out + down * far]])


def _curly(outline: np.ndarray, seed: int, ppu: float) -> np.ndarray:
    """Resample a hull outline and push it outwards in bumps (curls)."""
    closed = np.concatenate([outline, outline[:1]])
    seg = np.linalg.norm(np.diff(closed, axis=0), axis=1)
    t = np.concatenate([[0], np.cumsum(seg)])
    samples = np.linspace(0, t[-1], 72, endpoint=False)
    pts = np.stack([np.interp(samples, t, closed[:, 0]), np.interp(samples, t, closed[:, 1])], 1)
    centre = pts.mean(0)
    radial = (pts - centre) / np.maximum(np.linalg.norm(pts - centre, axis=1, keepdims=True), 1e-9)
    phase = np.random.default_rng([seed, 0xC0]).uniform(0, 2 * np.pi)
    bump = 0.06 * ppu * np.abs(np.sin(np.linspace(0, 18 * np.pi, 72, endpoint=False) + phase))
    return pts + radial * bump[:, None]


def _eye_and_mouth_details(cv: _Canvas, cam: Camera, geo: FaceGeometry, scene: Scene) -> None:
    ppu = cam.pixels_per_unit
    eye_labels = (LABEL_IDS["r_eye"], LABEL_IDS["l_eye"])
    if scene.expression.eyes_closed:
        for label in eye_labels:
            np.copyto(cv.material, np.uint8(MATERIAL_LASH), where=cv.labels == label)
    else:
        cv.scratch[:] = 0
        r = geo.iris_radius * ppu
        for centre in geo.eye_centres:
            c = cam.project(centre[None] + np.array([[scene.gaze[0], scene.gaze[1], 0.0]]))[0]
            cv2.circle(cv.scratch, _pts(c), int(round(r * 16)), MATERIAL_IRIS, -1, cv2.LINE_8, 4)
            cv2.circle(cv.scratch, _pts(c), int(round(0.45 * r * 16)), MATERIAL_PUPIL, -1, cv2.LINE_8, 4)
        inside = (cv.scratch > 0) & ((cv.labels == eye_labels[0]) | (cv.labels == eye_labels[1]))
        np.copyto(cv.material, cv.scratch, where=inside)
    if geo.mouth is not None and scene.expression.mouth_open > 0.3:
        teeth = cam.project(geo.mouth[: len(geo.mouth) // 2])
        band = teeth + np.array([0.0, 0.05 * ppu])
        poly = np.concatenate([teeth, band[::-1]])
        cv.scratch[:] = 0
        _fill(cv.scratch, poly, 1)
        teeth_px = (cv.scratch > 0) & (cv.labels == LABEL_IDS["mouth"])
        np.copyto(cv.material, np.uint8(MATERIAL_TEETH), where=teeth_px)


def _draw_glasses(cv: _Canvas, cam: Camera, geo: FaceGeometry, idp: IdentityParams) -> None:
    label = LABEL_IDS["eye_g"]
    width = max(1, int(round(0.03 * cam.pixels_per_unit)))
    phi = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    rims = []
    for centre in geo.eye_centres:
        ring = centre + np.stack([0.21 * np.cos(phi), 0.15 * np.sin(phi) + 0.01, np.full_like(phi, 0.12)], 1)
        rims.append(_pts(cam.project(ring)))
    bridge = _pts(cam.project(geo.eye_centres + np.array([[0.21, -0.02, 0.12], [-0.21, -0.02, 0.12]])))
    arms = []
    for side, centre in ((-1, geo.eye_centres[0]), (1, geo.eye_centres[1])):
        if cam.facing(np.array([[side * 1.0, 0.0, 0.3]]))[0] > 0.2:
            a = head_axes(idp)[0]
            arm = np.array([centre + [side * 0.21, -0.02, 0.12], [side * a * 1.01, 0.02, -0.05]])
            arms.append(_pts(cam.project(arm)))
    for canvas in (cv.labels, cv.material):
        cv2.polylines(canvas, rims + arms, True, label, width, cv2.LINE_8, 4)
        cv2.line(canvas, bridge[0], bridge[1], label, width, cv2.LINE_8, 4)


def render(scene: Scene) -> Rendered:
    cv, cam, geo, extra = rasterise(scene)
    rgb = colourise(cv.material, cam, scene, extra["occluders"])
    marks68 = cam.project(geo.landmarks68)
    marks5 = landmarks5_from(marks68, cam.project(geo.eye_centres))
    occluders = [
        {"kind": o["kind"], "label": o["label"], "hidden_regions": o["hidden_regions"]} for o in extra["occluders"]
    ]
    return Rendered(rgb, cv.labels, marks68, marks5, extra["box"], occluders)
