"""Rasterise a synthetic face: the material map (painter's order, far to near) and the label map.

Every pixel's colour comes from its *material* (the label, or a detail inside a label such as the
iris or the teeth) times shading times a texture, so the parsing map matches the pixels exactly.
Only the material map is painted; every material lies inside one label, so the label map is one
lookup of it (``MATERIAL_LABEL``). Small parts are painted inside their bounding boxes, not over
whole-image masks: at 256 px a face costs a few hundred small numpy/OpenCV calls, and their count,
not the pixel work, is what the time goes into.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from data_prep.synth.identity import IdentityParams
from data_prep.synth.landmarks import FaceGeometry, face_geometry, landmarks5_from
from data_prep.synth.occluders import OCCLUDER_LABELS, OCCLUDER_MATERIALS, draw_occluder
from data_prep.synth.scene import EYE_DETAIL_MATERIALS, MATERIAL_TEETH, Scene, side_label
from data_prep.synth.shade import colourise
from data_prep.synth.streams import Stream
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
_OCCLUDER_STREAM_TAG, _CURL_STREAM_TAG = 0x0CC, 0xC0


@dataclass
class Rendered:
    bgr: np.ndarray  # (S, S, 3) uint8, OpenCV channel order (what the JPEG encoder takes)
    labels: np.ndarray  # (S, S) uint8
    landmarks68: np.ndarray  # (68, 2) crop pixels
    landmarks5: np.ndarray  # (5, 2)
    box: tuple[float, float, float, float]  # face (skin region) bbox x0, y0, x1, y1
    occluders: list[dict]

    @property
    def rgb(self) -> np.ndarray:
        """(S, S, 3) uint8 RGB view of ``bgr``."""
        return self.bgr[:, :, ::-1]


def _pts(px: np.ndarray) -> np.ndarray:
    """Pixel coordinates -> int32 with 4 fractional bits (cv2 ``shift=4``) for sub-pixel polygons."""
    return np.rint(px * 16).astype(np.int32)  # rint: the ufunc np.round calls, without its wrapper


def _fill(canvas: np.ndarray, px: np.ndarray, value: int) -> None:
    cv2.fillPoly(canvas, [_pts(px)], int(value), cv2.LINE_8, 4)


def _hull(px: np.ndarray) -> np.ndarray:
    return cv2.convexHull(px.astype(np.float32))[:, 0].astype(np.float64)


def _material_labels() -> np.ndarray:
    """(256,) uint8: the label each material lies in (materials 0..18 are the labels themselves)."""
    lut = np.zeros(256, np.uint8)
    lut[:NUM_LABELS] = np.arange(NUM_LABELS)
    for side, materials in EYE_DETAIL_MATERIALS.items():
        lut[list(materials)] = side_label("eye", side)
    lut[MATERIAL_TEETH] = LABEL_IDS["mouth"]
    for kind, material in OCCLUDER_MATERIALS.items():
        lut[material] = OCCLUDER_LABELS[kind]
    return lut


MATERIAL_LABEL = _material_labels()


class _Canvas:
    """The material map (the label map is read off it at the end) and a scratch map for masks."""

    def __init__(self, size: int):
        self.material = np.zeros((size, size), np.uint8)
        self.scratch = np.zeros((size, size), np.uint8)
        self.labels: np.ndarray | None = None  # set by ``finish``

    def fill(self, px: np.ndarray, material: int) -> None:
        _fill(self.material, px, material)

    def put(self, mask: np.ndarray, material: int) -> None:
        np.copyto(self.material, np.uint8(material), where=mask)  # faster than boolean-index assignment

    def current_labels(self) -> np.ndarray:
        return cv2.LUT(self.material, MATERIAL_LABEL)

    def finish(self, details: tuple[slice, slice] | None) -> None:
        """Read the label map off the material map. Materials that are not labels themselves (19..)
        lie only inside the box ``details`` (None: anywhere), so outside it the labels are a copy."""
        if details is None:
            self.labels = self.current_labels()
        else:
            self.labels = self.material.copy()
            self.labels[details] = cv2.LUT(self.material[details], MATERIAL_LABEL)


def _draw_ear(cv: _Canvas, cam: Camera, scene: Scene, side: int, ear: tuple) -> None:
    outline, _, lobe = ear
    px = cam.project(np.concatenate([outline, lobe[None] + np.array([[0, 0.05, 0.02]])]))
    cv.fill(px[:-1], side_label("ear", side))
    if scene.earrings:
        r = max(1.0, 0.045 * cam.pixels_per_unit)
        cv2.circle(cv.material, _pts(px[-1]), int(round(r * 16)), LABEL_IDS["ear_r"], -1, cv2.LINE_8, 4)


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
    """Paint materials far to near, then read the labels off them; returns the canvas and what the meta needs."""
    idp, size = scene.identity, scene.size
    cam = Camera.for_crop(size, scene.yaw, scene.pitch, scene.roll, scene.zoom, scene.shift)
    body_cam = Camera(np.eye(3), cam.center, cam.pixels_per_unit)  # the torso does not turn with the head
    geo = face_geometry(idp, scene.expression)
    cv = _Canvas(size)
    hair, skin_label = LABEL_IDS["hair"], LABEL_IDS["skin"]

    back = hair_back_polygon(idp)
    if back is not None:
        cv.fill(cam.project(back), hair)
    neck, cloth = neck_polygon(idp), cloth_polygon(scene.cloth_neckline, 1.0)
    body_px = body_cam.project(np.concatenate([neck, cloth]))
    cv.fill(body_px[: len(neck)], LABEL_IDS["neck"])
    cv.fill(body_px[len(neck) :], LABEL_IDS["cloth"])
    if scene.necklace:
        chain = _pts(body_cam.project(necklace_curve(0.25 + 0.2 * scene.cloth_neckline)))
        width = max(2, int(round(0.04 * cam.pixels_per_unit)))
        cv2.polylines(cv.material, [chain], False, LABEL_IDS["neck_l"], width, cv2.LINE_8, 4)

    ears = {side: ear_outline(idp, side) for side in (-1, 1)}
    ear_facing = dict(zip((-1, 1), cam.facing(np.stack([ears[-1][1], ears[1][1]])).tolist()))
    for side in (-1, 1):
        if ear_facing[side] < _EAR_FRONT_FACING:
            _draw_ear(cv, cam, scene, side, ears[side])

    if idp.hair_style != "bald":
        cap = hair_cap_points(idp)
        if idp.hair_style == "bun":
            cap = np.concatenate([cap, bun_points(idp)])
        outline = _hull(cam.project(cap))
        if idp.hair_style == "curly":
            outline = _curly(outline, scene.texture_seed, cam.pixels_per_unit)
        cv.fill(outline, hair)

    # the head silhouette is skin below the front hairline and hair above it: paint the head as hair
    # (17) and the part below the hairline as 16 on a second map; their saturating difference is
    # 1 (skin) where both hold, 17 (hair) above the hairline and 0 off the head. All inside the
    # head's bounding box (``head_roi``), whose maps start at pixel ``origin``.
    head_px = _hull(cam.project(head_points(idp)))
    head_roi = _roi(head_px, size)
    origin = np.array([head_roi[1].start, head_roi[0].start], dtype=np.float64)
    head_map = np.zeros((head_roi[0].stop - head_roi[0].start, head_roi[1].stop - head_roi[1].start), np.uint8)
    face_box = (0.0, 0.0, float(size), float(size))  # when no skin shows
    if head_map.size:
        if idp.hair_style == "bald":
            _fill(head_map, head_px - origin, skin_label)
        else:
            _fill(head_map, head_px - origin, hair)
            below = np.zeros_like(head_map)
            _fill(below, _below_hairline(cam, idp, size) - origin, hair - skin_label)
            cv2.subtract(head_map, below, dst=head_map)
        np.copyto(cv.material[head_roi], head_map, where=head_map > 0)
        x, y, w, h = cv2.boundingRect(cv2.inRange(head_map, skin_label, skin_label))  # the face box: all skin
        if w:
            x0, y0 = x + head_roi[1].start, y + head_roi[0].start
            face_box = (float(x0), float(y0), float(x0 + w), float(y0 + h))

    for side in (-1, 1):
        if ear_facing[side] >= _EAR_FRONT_FACING:
            _draw_ear(cv, cam, scene, side, ears[side])

    # facial features, clipped to the visible skin, nearest last; all parts' points in one go
    features = _features(geo)
    counts = [len(f[0]) for f in features]
    starts = np.cumsum([0] + counts[:-1])
    points = np.concatenate([f[0] for f in features])
    in_camera = cam.to_camera(points)
    facing = np.add.reduceat(cam.facing(ellipsoid_normals(points, idp)), starts) / counts
    depth = np.add.reduceat(in_camera[:, 2], starts) / counts
    pixels = cam.project(points)
    fixed = _pts(pixels)  # cv2's fixed point (1/16 px), once for all parts
    parts = []
    for k, (_points, label, hull) in enumerate(features):
        if facing[k] < _FEATURE_MIN_FACING:
            continue  # turned away from the camera
        part = slice(starts[k], starts[k] + counts[k])
        parts.append((float(depth[k]), label, pixels[part] if hull else fixed[part], hull))
    roi = _roi(pixels, size)  # everything below happens inside the features' bounding box
    scratch, material = cv.scratch[roi], cv.material[roi]
    scratch[:] = 0
    for _, label, px, hull in sorted(parts, key=lambda p: p[0]):
        cv2.fillPoly(cv.scratch, [_pts(_hull(px)) if hull else px], label, cv2.LINE_8, 4)
    np.copyto(material, scratch, where=(scratch > 0) & (material == skin_label))
    _eye_and_mouth_details(cv, cam, geo, scene)

    if idp.hair_style == "fringe":
        fringe_pts = fringe_polygon(idp)
        half = len(fringe_pts) // 2  # top edge left to right, then bottom edge right to left
        facing = cam.facing(ellipsoid_normals(fringe_pts, idp))
        keep = (facing[:half] > 0.1) & (facing[half:][::-1] > 0.1)  # columns seen from the front only
        if keep.sum() >= 2 and head_map.size:
            kept = np.concatenate([fringe_pts[:half][keep], fringe_pts[half:][::-1][keep][::-1]])
            fringe = np.zeros_like(head_map)  # the fringe only counts on the head
            _fill(fringe, cam.project(kept) - origin, 1)
            np.copyto(cv.material[head_roi], np.uint8(hair), where=(fringe > 0) & (head_map > 0))
    if scene.glasses:
        _draw_glasses(cv, cam, geo, idp)
    if scene.hat:
        cv.fill(_hull(cam.project(hat_points(idp, 1.15))), LABEL_IDS["hat"])

    occluders = []
    if scene.occluders:
        rng = Stream(scene.texture_seed, _OCCLUDER_STREAM_TAG)
    for kind in scene.occluders:
        cv.scratch[:] = 0
        occ = draw_occluder(kind, cv.scratch, rng, cam, idp, geo)
        hidden = _hidden_regions(cv.current_labels(), cv.scratch)
        cv.put(cv.scratch > 0, occ.material)
        occluders.append({"kind": kind, "label": occ.label, "hidden_regions": hidden, "colour": occ.colour})
    cv.finish(None if scene.occluders else roi)  # eye details and teeth lie in the features' box
    return cv, cam, geo, {"occluders": occluders, "box": face_box}


def _hidden_regions(before: np.ndarray, mask: np.ndarray) -> list[str]:
    """Names of the labels the occluder (``mask`` > 0) covers (at least 2 px and 3% of the label's area)."""
    hist_range = [0, NUM_LABELS]
    total = cv2.calcHist([before], [0], None, [NUM_LABELS], hist_range).ravel()  # exact counts below 2^24
    covered = cv2.calcHist([before], [0], mask, [NUM_LABELS], hist_range).ravel()
    return [LABEL_NAMES[i] for i in range(1, NUM_LABELS) if covered[i] >= 2 and covered[i] >= 0.03 * total[i]]


def _below_hairline(cam: Camera, idp: IdentityParams, size: int) -> np.ndarray:
    """Polygon of everything under the visible front hairline, extended sideways off the crop."""
    pts, normals = hairline_curve(idp)
    keep = cam.facing(normals) > 0.0
    if keep.sum() < 2:
        keep[:] = True
    px = cam.project(pts[keep])
    x_axis = cam.rotation[:2, 0] / max(math.hypot(*cam.rotation[:2, 0].tolist()), 1e-9)
    down = np.array([-x_axis[1], x_axis[0]])
    far = 4.0 * size
    left_out, right_out = px[0] - x_axis * far, px[-1] + x_axis * far
    return np.concatenate(
        [np.stack([left_out + down * far, left_out]), px, np.stack([right_out, right_out + down * far])]
    )


def _curly(outline: np.ndarray, seed: int, ppu: float) -> np.ndarray:
    """Resample a hull outline and push it outwards in bumps (curls)."""
    closed = np.concatenate([outline, outline[:1]])
    seg = np.linalg.norm(np.diff(closed, axis=0), axis=1)
    t = np.concatenate([[0], np.cumsum(seg)])
    samples = np.linspace(0, t[-1], 72, endpoint=False)
    pts = np.stack([np.interp(samples, t, closed[:, 0]), np.interp(samples, t, closed[:, 1])], 1)
    centre = pts.mean(0)
    radial = (pts - centre) / np.maximum(np.linalg.norm(pts - centre, axis=1, keepdims=True), 1e-9)
    phase = Stream(seed, _CURL_STREAM_TAG).uniform(0, 2 * np.pi)
    bump = 0.06 * ppu * np.abs(np.sin(np.linspace(0, 18 * np.pi, 72, endpoint=False) + phase))
    return pts + radial * bump[:, None]


def _roi(px: np.ndarray, size: int, margin: float = 2.0) -> tuple[slice, slice]:
    """The (rows, columns) slices of the image box around the pixel points ``px``, plus a margin."""
    x, y, w, h = cv2.boundingRect(px.astype(np.float32))  # integer box around the points
    pad = math.ceil(margin)
    x0, y0 = min(size, max(0, x - pad)), min(size, max(0, y - pad))
    x1, y1 = min(size, max(0, x + w + pad + 1)), min(size, max(0, y + h + pad + 1))
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


def _eye_and_mouth_details(cv: _Canvas, cam: Camera, geo: FaceGeometry, scene: Scene) -> None:
    """Iris + pupil (or lashes when closed) inside each eye's region, teeth inside an open mouth;
    each painted within a small box around the part, and only onto the part's own label."""
    ppu = cam.pixels_per_unit
    size = scene.size
    r = geo.iris_radius * ppu
    gaze = np.array([scene.gaze[0], scene.gaze[1], 0.0])
    centres = cam.project(geo.eye_centres + gaze)
    for side, centre, contour in ((-1, centres[0], geo.eyes[0]), (1, centres[1], geo.eyes[1])):
        iris, pupil, lash = EYE_DETAIL_MATERIALS[side]
        eye_label = side_label("eye", side)
        if scene.expression.eyes_closed:
            roi = _roi(cam.project(contour), size)
            material = cv.material[roi]
            np.copyto(material, np.uint8(lash), where=material == eye_label)
            continue
        roi = _roi(centre[None], size, margin=r + 2)
        scratch, material = cv.scratch[roi], cv.material[roi]
        scratch[:] = 0
        cv2.circle(cv.scratch, _pts(centre), int(round(r * 16)), iris, -1, cv2.LINE_8, 4)
        cv2.circle(cv.scratch, _pts(centre), int(round(0.45 * r * 16)), pupil, -1, cv2.LINE_8, 4)
        np.copyto(material, scratch, where=(scratch > 0) & (material == eye_label))
    if geo.mouth is not None and scene.expression.mouth_open > 0.3:
        teeth = cam.project(geo.mouth[: len(geo.mouth) // 2])
        band = teeth + np.array([0.0, 0.05 * ppu])
        poly = np.concatenate([teeth, band[::-1]])
        roi = _roi(poly, size)
        scratch, material = cv.scratch[roi], cv.material[roi]
        scratch[:] = 0
        _fill(cv.scratch, poly, 1)
        np.copyto(material, np.uint8(MATERIAL_TEETH), where=(scratch > 0) & (material == LABEL_IDS["mouth"]))


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
    cv2.polylines(cv.material, rims + arms, True, label, width, cv2.LINE_8, 4)
    cv2.line(cv.material, bridge[0], bridge[1], label, width, cv2.LINE_8, 4)


def render(scene: Scene) -> Rendered:
    cv, cam, geo, extra = rasterise(scene)
    bgr = colourise(cv.material, cam, scene, extra["occluders"])
    marks = cam.project(np.concatenate([geo.landmarks68, geo.eye_centres]))
    marks68 = marks[:68]
    marks5 = landmarks5_from(marks68, marks[68:])
    occluders = [
        {"kind": o["kind"], "label": o["label"], "hidden_regions": o["hidden_regions"]} for o in extra["occluders"]
    ]
    return Rendered(bgr, cv.labels, marks68, marks5, extra["box"], occluders)
