"""What one synthetic face is made of: the scene description, lighting, and the material ids.

A *material* is what a pixel is coloured from: materials 0..18 are the labels' own surfaces; the
others are details inside a label (iris, pupil, teeth, closed-eye lashes) or occluder surfaces.
Every material lies inside one label, so the label map is a lookup of the material map.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from data_prep.synth.identity import IdentityParams
from data_prep.synth.template3d import Expression
from pacofr.data.format import LABEL_IDS

MATERIAL_IRIS, MATERIAL_PUPIL, MATERIAL_TEETH, MATERIAL_LASH = 19, 20, 21, 22  # eye details: image-left eye
# 23 hand, 24 mask fabric, 25 sunglass lens, 26 object (see occluders)
MATERIAL_IRIS_R, MATERIAL_PUPIL_R, MATERIAL_LASH_R = 27, 28, 29  # the same details in the image-right eye
NUM_MATERIALS = 30
# Each eye's details have their own materials so that every material belongs to exactly one label:
# the renderer paints only the material map and reads the label map off it (``render.MATERIAL_LABEL``).
EYE_DETAIL_MATERIALS = {
    -1: (MATERIAL_IRIS, MATERIAL_PUPIL, MATERIAL_LASH),
    1: (MATERIAL_IRIS_R, MATERIAL_PUPIL_R, MATERIAL_LASH_R),
}


# Which image side the ``l_*`` labels (l_brow, l_eye, l_ear) name. True: the subject's own left, which
# is the image RIGHT of a frontal face (anatomical convention, as we read CelebAMask-HQ). Flip this
# one switch if the real-data parser turns out to use the viewer's left; tests follow it.
L_LABELS_ARE_SUBJECT_LEFT = True


def side_label(part: str, image_side: int) -> int:
    """Label id of ``part`` ("brow", "eye", "ear") on image side -1 (left) or +1 (right)."""
    subject_left = (image_side > 0) == L_LABELS_ARE_SUBJECT_LEFT
    return LABEL_IDS[("l_" if subject_left else "r_") + part]


@dataclass
class Lighting:
    direction: tuple[float, float, float]  # unit vector towards the light, camera frame (z to the camera)
    ambient: float
    colour_cast: tuple[float, float, float]

    def to_json(self) -> dict:
        return {
            "direction": [round(c, 4) for c in self.direction],
            "ambient": round(self.ambient, 4),
            "colour_cast": [round(c, 4) for c in self.colour_cast],
        }


@dataclass
class Scene:
    """Everything one face needs; drawn from (seed, index) by ``generate.sample_scene``."""

    size: int
    identity: IdentityParams
    yaw: float
    pitch: float
    roll: float
    zoom: float
    shift: tuple[float, float]
    expression: Expression
    lighting: Lighting
    cloth_rgb: tuple[float, float, float]
    cloth_neckline: float
    background: str  # "blobs" | "gradient" | "stripes"
    glasses: bool = False
    earrings: bool = False
    necklace: bool = False
    hat: bool = False
    accessory_rgb: tuple[float, float, float] = (0.8, 0.7, 0.3)
    hat_rgb: tuple[float, float, float] = (0.3, 0.3, 0.5)
    gaze: tuple[float, float] = (0.0, 0.0)
    occluders: list[str] = field(default_factory=list)
    texture_seed: int = 0
