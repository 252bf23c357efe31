"""Occluders drawn over the finished face, each with the label a CelebAMask-HQ annotator would give it.

Label choice (documented contract for synthetic parsing truth):
  - ``mask`` (surgical mask / scarf over the lower face): ``cloth`` (16) - it is fabric worn by the person.
  - ``sunglasses`` (dark lenses over both eyes): ``eye_g`` (6).
  - ``hand`` and ``object`` (a cup, phone, microphone...): ``background`` (0). CelebAMask-HQ has no
    occluder class and leaves foreign objects unannotated, so a parser trained on it (the one the
    real-data pipeline uses) outputs 0 there; the synthetic truth follows the same convention. The
    meta's ``occluders`` entry (``kind`` + ``hidden_regions``) tells a consumer exactly what was hidden.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from data_prep.synth.identity import IdentityParams
from data_prep.synth.landmarks import FaceGeometry
from data_prep.synth.streams import Stream
from data_prep.synth.template3d import Camera, on_surface

OCCLUDER_KINDS: tuple[str, ...] = ("hand", "mask", "sunglasses", "object")
OCCLUDER_LABELS: dict[str, int] = {"hand": 0, "mask": 16, "sunglasses": 6, "object": 0}
# material ids (see render.MATERIAL_*) of the occluders' own surface colours
OCCLUDER_MATERIALS: dict[str, int] = {"hand": 23, "mask": 24, "sunglasses": 25, "object": 26}


@dataclass
class Occluder:
    kind: str
    label: int
    material: int
    colour: tuple[float, float, float]


def _pts(px: np.ndarray) -> np.ndarray:
    return np.round(px * 16).astype(np.int32)


def draw_occluder(
    kind: str, canvas: np.ndarray, rng: Stream, cam: Camera, idp: IdentityParams, geo: FaceGeometry
) -> Occluder:
    """Draw occluder ``kind`` as 1s into the zeroed uint8 ``canvas``; return its label and colour."""
    ppu = cam.pixels_per_unit
    marks = cam.project(geo.landmarks68)
    if kind == "hand":
        target = marks[rng.choice([8, 30, 48, 54, 2, 14])]
        angle = rng.uniform(-40, 40)
        palm = (0.32 * ppu, 0.4 * ppu)
        centre = target + rng.normals(0.08 * ppu, 2)
        cv2.ellipse(canvas, _pts(centre), _pts(np.array(palm)), angle, 0, 360, 1, -1, cv2.LINE_8, 4)
        rot = np.radians(angle)
        up = np.array([np.sin(rot), -np.cos(rot)])
        side = np.array([np.cos(rot), np.sin(rot)])
        width = max(1, int(round(0.11 * ppu)))
        for k, length in zip((-1.5, -0.5, 0.5, 1.5), (0.42, 0.5, 0.48, 0.36)):
            base = centre + up * palm[1] * 0.7 + side * k * 0.1 * ppu
            tip = base + up * length * ppu
            cv2.line(canvas, _pts(base), _pts(tip), 1, width, cv2.LINE_8, 4)
        wrist_end = centre - up * 3.0 * ppu
        cv2.line(canvas, _pts(centre), _pts(wrist_end), 1, max(1, int(round(0.5 * ppu))), cv2.LINE_8, 4)
        tone = np.clip(np.array(idp.skin_rgb) * rng.uniform(0.85, 1.05), 0, 1)
        colour = tuple(float(c) for c in tone)
    elif kind == "mask":
        a = idp.face_width
        u_top = np.linspace(-0.95 * a, 0.95 * a, 9)
        v_top = 0.3 + 0.08 * (u_top / a) ** 2
        top = on_surface(u_top, v_top, idp, 0.06 + 0.18 * np.exp(-((u_top / 0.2) ** 2)))
        jaw = geo.landmarks68[1:16][::-1] * np.array([1.03, 1.02, 1.0]) + np.array([0, 0.03, 0.05])
        poly = np.concatenate([top, jaw])
        cv2.fillPoly(canvas, [_pts(cam.project(poly))], 1, cv2.LINE_8, 4)
        palette = np.array([[0.55, 0.75, 0.9], [0.92, 0.92, 0.92], [0.1, 0.1, 0.12], [0.6, 0.15, 0.2]])
        colour = tuple(float(c) for c in palette[rng.integer(len(palette))])
    elif kind == "sunglasses":
        phi = np.linspace(0, 2 * np.pi, 20, endpoint=False)
        for centre in geo.eye_centres:
            ring = centre + np.stack([0.2 * np.cos(phi), 0.13 * np.sin(phi) + 0.01, np.full_like(phi, 0.1)], 1)
            cv2.fillPoly(canvas, [_pts(cam.project(ring))], 1, cv2.LINE_8, 4)
        bridge = cam.project(geo.eye_centres + np.array([0, -0.02, 0.1]))
        cv2.line(canvas, _pts(bridge[0]), _pts(bridge[1]), 1, max(1, int(round(0.05 * ppu))), cv2.LINE_8, 4)
        colour = (0.05, 0.05, 0.07) if rng.chance(0.7) else (0.25, 0.12, 0.05)
    elif kind == "object":
        centre = marks[rng.choice([30, 57, 4, 12, 19, 24])] + rng.normals(0.1 * ppu, 2)
        n = 4 + rng.integer(4)
        ang = np.sort(rng.uniforms(0, 2 * np.pi, n))
        radius = rng.uniform(0.25, 0.55) * ppu * rng.uniforms(0.7, 1.3, n)
        poly = centre + np.stack([np.cos(ang), np.sin(ang)], 1) * radius[:, None]
        cv2.fillPoly(canvas, [_pts(cv2.convexHull(poly.astype(np.float32))[:, 0].astype(np.float64))], 1, cv2.LINE_8, 4)
        colour = tuple(float(c) for c in rng.uniforms(0.05, 0.95, 3))
    else:
        raise ValueError(f"unknown occluder kind {kind!r} (known: {', '.join(OCCLUDER_KINDS)})")
    return Occluder(kind, OCCLUDER_LABELS[kind], OCCLUDER_MATERIALS[kind], colour)
