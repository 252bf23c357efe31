"""Alignment: the similarity transform puts the 5 landmarks on the template, at any scale and rotation."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep.align import ARCFACE_112, align_face, apply_affine, canonical_template, estimate_similarity


def test_template_framing():
    t = canonical_template(256)
    assert t[0, 0] < t[1, 0] and t[3, 0] < t[4, 0]  # image-left points first (LANDMARK5 order)
    eye_dist = np.hypot(*(t[1] - t[0]))
    assert 55 < eye_dist < 65  # FFHQ framing: ~1/4 of the crop, room for hair and ears
    # zoom 1 with S=112 is ArcFace's own template (up to the half-pixel centre convention)
    assert np.abs(canonical_template(112, zoom=1.0) - ARCFACE_112).max() < 0.5 + 1e-9


@pytest.mark.parametrize(("scale", "angle"), [(0.4, 0.0), (3.0, 20.0), (8.0, -35.0)])
def test_landmarks_land_on_the_template_and_the_pixels_follow(scale, angle):
    """A photo made by a known similarity from a canonical face: after alignment, a bright dot drawn at
    the source's left eye sits at the template's left eye, at any scale (incl. heavy downscaling)."""
    size = 128
    template = canonical_template(size)
    a = np.radians(angle)
    rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    src = template @ rot.T + 400.0
    side = int(src.max() + 400)
    image = np.zeros((side, side, 3), np.uint8)
    cx, cy = np.round(src[0]).astype(int)
    r = max(2, int(2 * scale))  # a dot of ~2 crop pixels radius whatever the scale
    yy, xx = np.ogrid[:side, :side]
    image[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = 255

    crop, matrix, crop_landmarks = align_face(image, src, size)
    assert crop.shape == (size, size, 3)
    assert np.abs(crop_landmarks - template).max() < 1e-6
    assert np.abs(apply_affine(matrix, src) - template).max() < 1e-6
    ys, xs = np.nonzero(crop[..., 0] > 100)
    assert len(xs) > 0
    assert np.hypot(xs.mean() - template[0, 0], ys.mean() - template[0, 1]) < 1.0


def test_degenerate_landmarks_are_refused():
    with pytest.raises(ValueError, match="degenerate"):
        estimate_similarity(np.zeros((5, 2)), canonical_template(64))
