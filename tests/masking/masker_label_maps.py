"""Small synthetic parsing maps for the masking tests: cartoon faces of ellipses and rectangles."""

from __future__ import annotations

import numpy as np
import torch

from pacofr.data.format import LABEL_IDS, REGION_GROUPS

L = LABEL_IDS


def ellipse(seg: np.ndarray, cy: float, cx: float, ry: float, rx: float, label: int) -> None:
    """Paint a filled axis-aligned ellipse of ``label`` into ``seg`` in place."""
    yy, xx = np.mgrid[: seg.shape[0], : seg.shape[1]]
    seg[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0] = label


def cartoon_face(rng: np.random.Generator, size: int = 224, width: int | None = None, drop_prob: float = 0.2):
    """A face-like label map (H, W) int64 with jittered parts; each small part is dropped with ``drop_prob``."""
    h, w = size, width or size
    seg = np.zeros((h, w), dtype=np.int64)
    j = lambda scale: rng.uniform(-scale, scale)  # noqa: E731
    cy, cx = h * (0.5 + j(0.06)), w * (0.5 + j(0.06))
    fy, fx = h * (0.30 + j(0.04)), w * (0.22 + j(0.04))
    seg[int(cy + fy * 0.8) :, int(w * 0.15) : int(w * 0.85)] = L["cloth"]
    ellipse(seg, cy + fy * 0.9, cx, fy * 0.5, fx * 0.5, L["neck"])
    if rng.random() > drop_prob:
        ellipse(seg, cy - fy * 0.25, cx, fy * 1.05, fx * 1.2, L["hair"])
    for side in (-1, 1):
        if rng.random() > drop_prob:
            ellipse(seg, cy, cx + side * fx, fy * 0.18, fx * 0.12, L["l_ear"] if side < 0 else L["r_ear"])
    ellipse(seg, cy, cx, fy, fx, L["skin"])
    parts = [
        (-0.30, -0.45, 0.05, 0.28, "l_brow"),
        (-0.30, 0.45, 0.05, 0.28, "r_brow"),
        (-0.15, -0.42, 0.07, 0.18, "l_eye"),
        (-0.15, 0.42, 0.07, 0.18, "r_eye"),
        (0.12, 0.0, 0.20, 0.12, "nose"),
        (0.45, 0.0, 0.06, 0.35, "u_lip"),
        (0.55, 0.0, 0.06, 0.33, "l_lip"),
    ]
    for dy, dx, ry, rx, name in parts:
        if rng.random() > drop_prob:
            ellipse(seg, cy + dy * fy, cx + dx * fx, ry * fy, rx * fx, L[name])
    return torch.from_numpy(seg)


def random_faces(count: int, seed: int = 0, size: int = 224, width: int | None = None) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    return [cartoon_face(rng, size, width) for _ in range(count)]


def touching_patches(seg: torch.Tensor, patch_size: int, labels: tuple[int, ...]) -> torch.Tensor:
    """bool (N,): patches holding at least one pixel of ``labels`` (plain loop, independent of the library)."""
    arr = seg.numpy()
    rows, cols = arr.shape[0] // patch_size, arr.shape[1] // patch_size
    out = np.zeros(rows * cols, dtype=bool)
    for r in range(rows):
        for c in range(cols):
            block = arr[r * patch_size : (r + 1) * patch_size, c * patch_size : (c + 1) * patch_size]
            out[r * cols + c] = np.isin(block, labels).any()
    return torch.from_numpy(out)


def component_touching(seg: torch.Tensor, patch_size: int, component: str) -> torch.Tensor:
    """Reference ``(N,)`` patches of a maskable component, straight from the definitions."""
    if component == "face_boundary":
        skin = touching_patches(seg, patch_size, REGION_GROUPS["skin"])
        other = touching_patches(seg, patch_size, REGION_GROUPS["hair"] + REGION_GROUPS["background"])
        return skin & other
    return touching_patches(seg, patch_size, REGION_GROUPS[component])
