"""Joint image + label-map augmentation: alignment, flip label swap, determinism, eval mode."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pacofr.data.format import LABEL_IDS, flip_label_lut
from pacofr.data.transforms import AugmentConfig, JointTransform


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _identity_norm(**kw: object) -> AugmentConfig:
    """No jitter and mean 0 / std 1, so output * 255 is the resampled RGB."""
    return AugmentConfig(jitter_prob=0.0, mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255), **kw)


def _face(face_factory, size: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    image, labels = face_factory(size, np.random.default_rng(seed))
    return torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(labels)


def _labels_from_colour(rgb: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """Per pixel, the label whose palette colour is nearest (the image encodes its source label)."""
    return ((rgb[:, :, None, :] - palette[None, None]) ** 2).sum(-1).argmin(-1)


def _agreement(a: torch.Tensor, b: torch.Tensor, dy: int, dx: int) -> float:
    """Fraction of pixels where ``a`` equals ``b`` shifted by (dy, dx), ignoring a 2-pixel border."""
    shifted = torch.roll(b, (dy, dx), (0, 1))
    return float((a == shifted)[2:-2, 2:-2].float().mean())


def test_crop_and_flip_keep_image_and_labels_aligned(face_factory, label_palette) -> None:
    image, seg = _face(face_factory)
    transform = JointTransform(64, train=True, config=_identity_norm(crop_scale=(0.3, 1.0)))
    palette = torch.from_numpy(label_palette.astype(np.float32))
    lut = torch.tensor(flip_label_lut())
    flips = 0
    for seed in range(12):
        out_image, out_seg, _ = transform(image, seg, _gen(seed))
        assert out_image.shape == (3, 64, 64) and out_image.dtype == torch.float32
        assert out_seg.shape == (64, 64) and out_seg.dtype == torch.int64
        seen = _labels_from_colour(out_image.permute(1, 2, 0), palette)  # 0..255 via the identity normalisation
        # The colour encodes the *source* label; a flip has renamed left/right labels since.
        plain, flipped = _agreement(seen, out_seg, 0, 0), _agreement(seen, lut[out_seg], 0, 0)
        assert abs(plain - flipped) > 0.003, "only one hypothesis can name the l/r parts right"
        source_labels = lut[out_seg] if flipped > plain else out_seg
        flips += int(flipped > plain)
        # aligned: high agreement, and strictly the best over all one-pixel offsets
        best = _agreement(seen, source_labels, 0, 0)
        assert best > 0.9, f"seed {seed}: only {best:.3f} of pixels agree with their label"
        for dy, dx in [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]:
            other = _agreement(seen, source_labels, dy, dx)
            assert best > other + 0.005, f"seed {seed}: labels fit the image better shifted by {(dy, dx)}"
    assert 0 < flips < 12, "both flipped and unflipped samples must occur with hflip_prob=0.5"


def test_flip_swaps_left_right_labels() -> None:
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    seg = torch.full((32, 32), LABEL_IDS["skin"], dtype=torch.int64)
    seg[:, :16] = LABEL_IDS["l_eye"]
    seg[:, 16:] = LABEL_IDS["r_eye"]
    image[0, :, :16] = 200  # red marks the pixels that were l_eye
    config = _identity_norm(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_prob=1.0)
    out_image, out_seg, _ = JointTransform(32, train=True, config=config)(image, seg, _gen(0))
    # pixels move right, and the left eye of the subject becomes the right one in label terms
    assert torch.allclose(out_image[0, :, 16:], torch.tensor(200.0), atol=1e-3)
    assert torch.allclose(out_image[0, :, :16], torch.tensor(0.0), atol=1e-3)
    assert torch.all(out_seg[:, 16:] == LABEL_IDS["r_eye"])
    assert torch.all(out_seg[:, :16] == LABEL_IDS["l_eye"])


def test_flip_maps_landmarks(face_factory) -> None:
    image, seg = _face(face_factory, 32)
    meta = {"landmarks5": [[10.0, 12.0], [21.0, 12.0], [16.0, 18.0], [12.0, 24.0], [20.0, 24.0]]}
    config = _identity_norm(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_prob=1.0)
    _, _, out = JointTransform(32, train=True, config=config)(image, seg, _gen(0), meta)
    assert out is not None
    assert out["landmarks5"] == [
        [31 - 21.0, 12.0],
        [31 - 10.0, 12.0],
        [31 - 16.0, 18.0],
        [31 - 20.0, 24.0],
        [31 - 12.0, 24.0],
    ]
    assert meta["landmarks5"][0] == [10.0, 12.0], "the input meta must not be modified"


def test_same_generator_same_output_and_jitter_only_touches_pixels(face_factory) -> None:
    image, seg = _face(face_factory, 64)
    transform = JointTransform(48, train=True)
    a = transform(image, seg, _gen(7))
    b = transform(image, seg, _gen(7))
    c = transform(image, seg, _gen(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    no_jitter = JointTransform(48, train=True, config=AugmentConfig(jitter_prob=0.0))(image, seg, _gen(7))
    assert torch.equal(no_jitter[1], a[1]), "colour jitter must not change the geometry"


def test_eval_mode_is_a_centre_crop(face_factory) -> None:
    image, seg = _face(face_factory, 256)
    out_image, out_seg, _ = JointTransform(224, train=False, config=_identity_norm())(image, seg, _gen(0))
    assert torch.equal(out_seg, seg[16:240, 16:240].long())
    assert torch.allclose(out_image, image[:, 16:240, 16:240].float(), atol=1e-3)
    # and it ignores the generator
    again = JointTransform(224, train=False, config=_identity_norm())(image, seg, _gen(99))
    assert torch.equal(again[0], out_image)


def test_default_normalisation_is_imagenet() -> None:
    image = torch.full((3, 8, 8), 128, dtype=torch.uint8)
    seg = torch.zeros(8, 8, dtype=torch.int64)
    out, _, _ = JointTransform(8, train=False, config=AugmentConfig(eval_crop_fraction=1.0))(image, seg, _gen(0))
    expected = (128 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(out[:, 0, 0], expected, atol=1e-5)


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="crop_scale"):
        AugmentConfig(crop_scale=(0.0, 1.0))


# --- the fast uint8 path against the torchvision ops it replaces -------------------------------------------
def _textured_face(face_factory, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic face with smooth shading and noise, so resampling and colour ops have texture to act on."""
    image, labels = face_factory(size, np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)
    ramp = np.linspace(-40, 40, size)[None, :, None] + np.linspace(-25, 25, size)[:, None, None]
    noisy = image.astype(np.float64) + ramp + rng.normal(0, 12, image.shape)
    image = np.clip(noisy, 0, 255).astype(np.uint8)
    return torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(labels)


def _draw(gen: torch.Generator) -> float:
    return torch.rand((), generator=gen).item()


def _torchvision_reference(
    transform: JointTransform, image: torch.Tensor, seg: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The float torchvision pipeline the uint8 path replaced, drawing the same numbers in the same order
    (one scalar draw at a time, as it did)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    cfg = transform.config
    height, width = seg.shape
    assert transform.train
    log_lo, log_hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
    for _ in range(10):  # torchvision's box search
        area = height * width * (cfg.crop_scale[0] + (cfg.crop_scale[1] - cfg.crop_scale[0]) * _draw(gen))
        aspect = math.exp(log_lo + (log_hi - log_lo) * _draw(gen))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=gen))
            left = int(torch.randint(0, width - w + 1, (), generator=gen))
            break
    else:
        raise AssertionError("the test's crops always fit within 10 tries")
    flip = _draw(gen) < cfg.hflip_prob
    out = [transform.size, transform.size]
    image = F.resized_crop(image, top, left, h, w, out, InterpolationMode.BILINEAR, antialias=True)
    seg = F.resized_crop(seg.to(torch.uint8)[None], top, left, h, w, out, InterpolationMode.NEAREST_EXACT)[0].long()
    if flip:
        image, seg = image.flip(-1), torch.tensor(flip_label_lut())[seg.flip(-1)]
    if _draw(gen) < cfg.jitter_prob:
        b, c, s = (1 + x * (2 * _draw(gen) - 1) for x in (cfg.brightness, cfg.contrast, cfg.saturation))
        _draw(gen)  # hue factor (hue is 0 here)
        image = F.adjust_saturation(F.adjust_contrast(F.adjust_brightness(image, b), c), s)
    return image, seg


@pytest.mark.parametrize("jitter_prob", [0.0, 1.0])
def test_uint8_path_matches_the_torchvision_pipeline(face_factory, jitter_prob: float) -> None:
    image, seg = _textured_face(face_factory, 96, seed=3)
    transform = JointTransform(80, train=True, config=AugmentConfig(jitter_prob=jitter_prob, crop_scale=(0.3, 1.0)))
    enlarged = shrunk = 0
    for seed in range(16):
        hwc = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
        fast_image, fast_seg, _ = transform.apply(hwc, seg.numpy().astype(np.uint8), _gen(seed))
        ref_image, ref_seg = _torchvision_reference(transform, image, seg, _gen(seed))
        assert fast_image.dtype == np.uint8 and fast_image.shape == (80, 80, 3)
        assert fast_seg.dtype == np.uint8 and fast_seg.shape == (80, 80)
        diff = (torch.from_numpy(fast_image).permute(2, 0, 1).int() - ref_image.int()).abs().float()
        (_, _, h, w), _, _ = transform._sample(96, 96, _gen(seed))
        if max(h, w) <= 80:  # enlarged: the same bilinear filter, rounding apart
            enlarged += 1
            assert diff.mean() < 0.5 and diff.quantile(0.99) <= 3 and diff.max() <= 6, f"seed {seed}"
        else:  # shrunk by <= 1.2x: plain bilinear instead of antialiased (worst case: this noisy texture)
            shrunk += 1
            assert diff.mean() < 1.5, f"seed {seed}: mean |diff| {diff.mean():.2f} grey levels"
        agreement = (torch.from_numpy(fast_seg).long() == ref_seg).float().mean()
        assert agreement > 0.99, f"seed {seed}: labels must pick the same source pixels (up to rounding ties)"
    assert enlarged and shrunk, "both resize regimes must be exercised"


def test_colour_jitter_matches_torchvision_ops(face_factory) -> None:
    from torchvision.transforms.v2 import functional as F

    from pacofr.data.transforms import jitter_colours

    image, _ = _textured_face(face_factory, 64, seed=5)
    hwc = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
    for b, c, s in [
        (1.4, 1.0, 1.0),
        (0.6, 1.0, 1.0),
        (1.0, 1.4, 1.0),
        (1.0, 0.6, 1.0),
        (1.0, 1.0, 1.4),
        (1.3, 0.7, 0.6),
    ]:
        fast = torch.from_numpy(jitter_colours(hwc, b, c, s)).permute(2, 0, 1).int()
        ref = F.adjust_saturation(F.adjust_contrast(F.adjust_brightness(image, b), c), s).int()
        diff = (fast - ref).abs()
        assert int(diff.max()) <= 2 and diff.float().mean() < 0.5, f"factors {(b, c, s)}: max {int(diff.max())}"
    assert np.array_equal(jitter_colours(hwc, None, None, None), hwc)


def test_strong_downscale_is_antialiased_like_torchvision() -> None:
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    from pacofr.data.transforms import resize_crop_image

    checker = ((np.indices((128, 128)).sum(0) % 2) * 255).astype(np.uint8)  # worst case for aliasing
    hwc = np.repeat(checker[:, :, None], 3, axis=2)
    box = (10, 6, 110, 100)
    out = resize_crop_image(hwc, box, 32)
    ref = F.resized_crop(
        torch.from_numpy(hwc).permute(2, 0, 1), *box, [32, 32], InterpolationMode.BILINEAR, antialias=True
    )
    assert torch.equal(torch.from_numpy(out).permute(2, 0, 1), ref)
    assert abs(float(out.mean()) - 127.5) < 2 and out.std() < 10, "an antialiased checkerboard shrinks to grey"


def test_normalize_images_matches_the_float_transform(face_factory) -> None:
    from pacofr.data.transforms import normalize_images

    image, seg = _face(face_factory, 64)
    transform = JointTransform(48, train=True)
    hwc = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
    pixels, _, _ = transform.apply(hwc, seg.numpy().astype(np.uint8), _gen(4))
    floats, _, _ = transform(image, seg, _gen(4))
    batch = torch.from_numpy(np.stack([pixels, pixels])).permute(0, 3, 1, 2)  # channels-last, as collated
    normalised = normalize_images(batch)
    assert normalised.dtype == torch.float32 and normalised.is_contiguous() and normalised.shape == (2, 3, 48, 48)
    assert torch.equal(normalised[0], floats) and torch.equal(normalised[1], floats)
    with pytest.raises(TypeError, match="uint8"):
        normalize_images(batch.float())


def test_apply_rejects_bad_input() -> None:
    transform = JointTransform(8)
    with pytest.raises(ValueError, match="image must be"):
        transform.apply(np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8), _gen(0))
    with pytest.raises(ValueError, match="seg must be uint8"):
        transform.apply(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.int64), _gen(0))
    with pytest.raises(ValueError, match="does not match"):
        transform.apply(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9), np.uint8), _gen(0))
