"""Robust decoding: every colour mode and orientation becomes the same upright RGB; bad files get a reason."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data_prep.decode import BadImage, decode_image
from data_prep.detect.base import Face, select_faces


def _astronaut():
    from skimage import data

    return data.astronaut()


@pytest.mark.parametrize(
    ("name", "tolerance"),
    [
        ("real/astronaut.png", 0),
        ("variants/exif_rotated.jpg", 6),
        ("variants/cmyk.jpg", 8),
        ("variants/palette.png", 12),
        ("variants/rgba.png", 0),
    ],
)
def test_colour_variants_decode_to_the_upright_rgb_image(raw_folder, name, tolerance):
    rgb = decode_image(raw_folder / name)
    assert rgb.dtype == np.uint8 and rgb.shape == (512, 512, 3)
    diff = np.abs(rgb[:, 40:].astype(int) - _astronaut()[:, 40:].astype(int))  # rgba: left strip transparent
    assert np.median(diff) <= tolerance, name


def test_alpha_is_composited_on_mid_grey(raw_folder):
    rgb = decode_image(raw_folder / "variants/rgba.png")
    assert (rgb[:, :40] == 128).all()


@pytest.mark.parametrize("name", ["variants/grey16.png", "variants/grey.jpg"])
def test_grey_and_16_bit_keep_their_levels(raw_folder, name):
    rgb = decode_image(raw_folder / name)
    grey = np.asarray(Image.fromarray(_astronaut()).convert("L")).astype(int)
    assert rgb.shape == (512, 512, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    assert np.median(np.abs(rgb[..., 0].astype(int) - grey)) <= 2


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("bad/empty.jpg", "empty_file"),
        ("bad/notes.txt", "not_an_image"),
        ("bad/random.jpg", "not_an_image"),
        ("bad/truncated.jpg", "truncated"),
        ("bad/bomb.png", "too_large"),
        ("bad/tiny.png", "too_small"),
    ],
)
def test_bad_files_raise_with_their_reason(raw_folder, name, reason):
    with pytest.raises(BadImage) as err:
        decode_image(raw_folder / name)
    assert err.value.reason == reason


def test_pixel_limit_is_checked_before_decoding(raw_folder):
    with pytest.raises(BadImage, match="too_large"):
        decode_image(raw_folder / "real/astronaut.png", max_pixels=512 * 511)
    assert decode_image(raw_folder / "real/astronaut.png", max_pixels=512 * 512).shape == (512, 512, 3)


def test_missing_file_is_unreadable(tmp_path):
    with pytest.raises(BadImage, match="unreadable"):
        decode_image(tmp_path / "nope.jpg")


def _face(x0, size, score):
    return Face(box=np.array([x0, 0, x0 + size, size], float), score=score, landmarks5=np.zeros((5, 2)))


def test_select_faces_applies_thresholds_and_keep_rule():
    faces = [_face(0, 100, 0.99), _face(200, 50, 0.95), _face(300, 120, 0.5), _face(500, 20, 0.99)]
    kept, dropped = select_faces(faces, min_score=0.9, min_size=40, keep="all")
    assert [f.size for f in kept] == [100, 50] and dropped == {"low_score": 1, "too_small": 1}
    kept, dropped = select_faces(faces, min_score=0.9, min_size=40, keep="largest")
    assert [f.size for f in kept] == [100] and dropped["not_largest"] == 1
    with pytest.raises(ValueError, match="keep"):
        select_faces(faces, 0.5, 0, keep="biggest")
