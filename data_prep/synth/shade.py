"""Colour the pixels of a rasterised face from its material map.

Each pixel = base colour of its material x shading (Lambert on the head ellipsoid, a cylinder for
the neck and clothes, flat for the background and occluders) x texture noise x colour cast, so
colours change only where materials (hence labels) change, plus smooth shading and fine texture.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from data_prep.synth.occluders import OCCLUDER_MATERIALS
from data_prep.synth.scene import (
    MATERIAL_IRIS,
    MATERIAL_IRIS_R,
    MATERIAL_LASH,
    MATERIAL_LASH_R,
    MATERIAL_PUPIL,
    MATERIAL_PUPIL_R,
    MATERIAL_TEETH,
    NUM_MATERIALS,
    Scene,
)
from data_prep.synth.streams import Stream
from data_prep.synth.template3d import Camera, head_axes

# The base colours are a fixed mix of the scene's colour sources (below), plus constants; kept as
# one (material, source, channel) weight table so a face's palette is one product, not 25 row edits.
_SOURCES = ("skin", "hair", "accessory", "lip", "cloth", "hat", "eye")


def _palette_weights(bald: bool) -> tuple[np.ndarray, np.ndarray]:
    weights = np.zeros((NUM_MATERIALS, len(_SOURCES), 3))
    constant = np.zeros((NUM_MATERIALS, 3))

    def mix(materials, source: str, factor=1.0) -> None:
        for m in np.atleast_1d(materials):
            weights[m, _SOURCES.index(source)] += factor

    mix(1, "skin")
    if bald:
        mix([2, 3], "skin", 0.45)
    else:
        mix([2, 3], "hair", 0.55)
        mix([2, 3], "skin", 0.45 * 0.4)
    constant[[4, 5]] = (0.93, 0.91, 0.88)  # sclera
    mix(6, "accessory", 0.5)
    mix([7, 8], "skin", np.array([0.95, 0.86, 0.84]))
    mix(9, "accessory")
    mix(10, "skin", np.array([1.04, 0.95, 0.93]))  # may exceed 1: the palette is clipped
    constant[11] = (0.35, 0.08, 0.09)
    mix(12, "lip")
    mix(13, "lip", 1.1)
    mix(14, "skin", 0.84)
    mix(15, "accessory")
    mix(16, "cloth")
    mix(17, "hair")
    mix(18, "hat")
    mix([MATERIAL_IRIS, MATERIAL_IRIS_R], "eye")
    constant[[MATERIAL_PUPIL, MATERIAL_PUPIL_R]] = (0.03, 0.03, 0.03)
    constant[MATERIAL_TEETH] = (0.9, 0.88, 0.8)
    mix([MATERIAL_LASH, MATERIAL_LASH_R], "skin", 0.35)
    return weights, constant


_PALETTE_WEIGHTS = {bald: _palette_weights(bald) for bald in (False, True)}


def material_palette(scene: Scene, occluders: list[dict]) -> np.ndarray:
    """(NUM_MATERIALS, 3) base colours in 0..1 for this scene."""
    idp = scene.identity
    sources = np.array(
        [idp.skin_rgb, idp.hair_rgb, scene.accessory_rgb, idp.lip_rgb, scene.cloth_rgb, scene.hat_rgb, idp.eye_rgb]
    )
    weights, constant = _PALETTE_WEIGHTS[idp.hair_style == "bald"]
    pal = np.minimum((weights * sources).sum(1) + constant, 1.0)
    for occ in occluders:
        pal[OCCLUDER_MATERIALS[occ["kind"]]] = occ["colour"]
    return pal.astype(np.float32)


# Shading per material: the head ellipsoid by default, a cylinder for the neck, necklace and clothes
# (materials 14..16), flat for occluders (23..26); the background has its own gain.
_BODY_FIRST, _BODY_LAST = 14, 16
_FLAT_FIRST, _FLAT_LAST = 23, 26
# texture amplitudes per material (blotches, hair strands; the fine grain is shared)
_BLOTCH = np.zeros(NUM_MATERIALS, np.float32)
_BLOTCH[[1, 7, 8, 10, 14]] = 0.05
_BLOTCH[[16, 18, 24]] = 0.12
_BLOTCH[23] = 0.05
# Fine grain: the same on every material (kept in the noise tile); the background gain has its own.
_FINE_GRAIN = 0.015
_BG_GRAIN = 0.04
_STRAND = np.zeros(NUM_MATERIALS, np.float32)
_STRAND[17] = 0.3
_STRAND[[2, 3]] = 0.15
_STRAND[[MATERIAL_IRIS, MATERIAL_IRIS_R]] = 0.25

_GRID_CACHE: dict[int, np.ndarray] = {}
_NOISE_CACHE: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
# Shading is smooth: compute it on a coarse grid and upsample.
_SHADE_GRID = 32
# The final multiply runs on uint8: shading x texture in 1/128 steps (0..1.99), the base colour in 0..255.
_FACTOR_ONE = 128.0


def _coarse_grid(size: int) -> np.ndarray:
    """(n, n, 3) float32 image of the coarse shading grid's cell centres as (x, y, 1) in pixels."""
    if size not in _GRID_CACHE:
        n = min(size, _SHADE_GRID)
        coords = (np.arange(n, dtype=np.float32) + 0.5) * (size / n) - 0.5
        gx, gy = np.meshgrid(coords, coords)
        _GRID_CACHE[size] = cv2.merge([gx, gy, np.ones_like(gx)])
    return _GRID_CACHE[size]


_ROW_SUM = np.ones((1, 3))


def _noise_fields(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Blotch, hair-strand, grain and background-grain tiles of 2S x 2S (fixed seed, built once per
    size); each sample takes a window at a random offset, which is cheap and deterministic. The grain
    tiles hold ``1 + amplitude x noise``, ready to use, so a sample pays no per-pixel work for them."""
    if size not in _NOISE_CACHE:
        rng = np.random.default_rng(0x5EED)
        big = 2 * size
        cells = max(4, big // 16)
        blotch = cv2.resize(
            rng.standard_normal((cells, cells), dtype=np.float32), (big, big), interpolation=cv2.INTER_CUBIC
        )
        strand = cv2.resize(
            rng.standard_normal((max(2, big // 32), big), dtype=np.float32), (big, big), interpolation=cv2.INTER_LINEAR
        )
        fine = rng.standard_normal((big, big), dtype=np.float32)
        _NOISE_CACHE[size] = (blotch, strand, 1 + np.float32(_FINE_GRAIN) * fine, 1 + np.float32(_BG_GRAIN) * fine)
    return _NOISE_CACHE[size]


def _head_shading(cam: Camera, scene: Scene) -> np.ndarray:
    """Lambert shading of the (inflated) head ellipsoid under the scene light, full resolution.

    On a coarse grid (shading is smooth), as per-pixel 3-vector transforms: head-plane point
    p = (x, y, z) on the front of the ellipsoid ``p^T M p = 1`` (a quadratic in z), normal ``M p``,
    cosine to the light.
    """
    k = 1 / cam.pixels_per_unit
    to_head = np.array([[k, 0, -cam.center[0] * k], [0, k, -cam.center[1] * k], [0, 0, 1]])
    a, b, c = (s * 1.1 for s in head_axes(scene.identity))
    m = (cam.rotation * np.array([1 / a**2, 1 / b**2, 1 / c**2])) @ cam.rotation.T
    # m22 z^2 + 2 qb z + qc = 0 with qb = m02 x + m12 y and qc = (x, y) m[:2, :2] (x, y) - 1
    quadratic = np.zeros((3, 3))
    quadratic[:2, :2], quadratic[2, 2] = m[:2, :2], -1
    xy1 = cv2.transform(_coarse_grid(scene.size), to_head)
    qb = cv2.transform(xy1, np.array([[m[0, 2], m[1, 2], 0.0]]))
    qc = cv2.transform(cv2.multiply(cv2.transform(xy1, quadratic), xy1), _ROW_SUM)
    xy1[:, :, 2] = (np.sqrt(np.maximum(qb * qb - m[2, 2] * qc, 0)) - qb) * (1 / m[2, 2])  # now (x, y, z)
    normal = cv2.transform(xy1, m)
    lit = cv2.transform(normal, np.asarray(scene.lighting.direction)[None])
    lam = lit / np.sqrt(cv2.transform(cv2.multiply(normal, normal), _ROW_SUM) + 1e-12)
    amb = scene.lighting.ambient
    shade = (amb + (1 - amb) * np.minimum(np.maximum(lam, 0), 1)).astype(np.float32)
    return cv2.resize(shade, (scene.size, scene.size), interpolation=cv2.INTER_LINEAR)


def _body_shading_row(cam: Camera, scene: Scene) -> np.ndarray:
    """(1, S) shading of the neck/clothes cylinder: it varies along x only."""
    xs = (np.arange(scene.size, dtype=np.float32) - cam.center[0]) / (2.4 * cam.pixels_per_unit)
    xs = np.minimum(np.maximum(xs, -0.95), 0.95)
    light = scene.lighting.direction
    lam = np.minimum(np.maximum(xs * light[0] + np.sqrt(1 - xs * xs) * light[2], 0), 1)
    amb = scene.lighting.ambient
    return (amb + (1 - amb) * lam).astype(np.float32)[None, :]


@functools.lru_cache(maxsize=8)
def _ramp(size: int) -> np.ndarray:
    return np.linspace(-0.25, 0.25, size, dtype=np.float32)


def _background(rng: Stream, scene: Scene, bg_grain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Background: a smooth muted colour field (S, S, 3), BGR uint8 with the colour cast in, and a
    brightness gain (S, S) with grain and, depending on the scene, a gradient or stripes."""
    size = scene.size
    grey = rng.uniform(0.2, 0.8)
    spread = rng.uniform(0.35, 0.7)
    base = (grey + spread * (rng.uniforms(0.05, 0.95, 48).reshape(4, 4, 3) - grey)).astype(np.float32)
    smooth = cv2.resize(base, (16, 16), interpolation=cv2.INTER_CUBIC)
    cast = np.array(scene.lighting.colour_cast, np.float32)
    smooth_u8 = cv2.convertScaleAbs(smooth[:, :, ::-1] * (255 * cast[::-1]))  # BGR; cast folded in, as for the palette
    field = cv2.resize(smooth_u8, (size, size), interpolation=cv2.INTER_LINEAR)
    gain = bg_grain  # read only
    if scene.background == "stripes":
        period = rng.uniform(0.05, 0.2) * size
        ang = rng.uniform(0, np.pi)
        k = 2 * np.pi / period
        t = np.arange(size, dtype=np.float32)
        ax, ay = t * np.float32(k * np.cos(ang)), t * np.float32(k * np.sin(ang))
        # sin(ax + ay) without a full-size sin: sin ax cos ay + cos ax sin ay, as one (S, 2) @ (2, S) product
        stripes = np.stack([np.cos(ay), np.sin(ay)], 1) @ np.stack([np.sin(ax), np.cos(ax)])
        gain = cv2.scaleAdd(stripes, 0.12, bg_grain)
    elif scene.background == "gradient":
        ramp = _ramp(size)
        gain = bg_grain + (ramp[:, None] if rng.chance(0.5) else ramp[None, :])
    return field, gain


def _lut(values: np.ndarray) -> np.ndarray:
    lut = np.zeros((256,) + values.shape[1:], values.dtype)
    lut[: len(values)] = values
    return lut


_COLOUR_STREAM_TAG = 0x7E7
_BLOTCH_LUT = _lut(_BLOTCH)
_STRAND_LUT = _lut(_STRAND)


def colourise(mat: np.ndarray, cam: Camera, scene: Scene, occluders: list[dict]) -> np.ndarray:
    """Colour every pixel from its material: base colour x shading x texture (x colour cast); BGR uint8.

    Each step is one whole-image OpenCV call (LUTs per material, masked copies); no per-part masks.
    """
    size = scene.size
    rng = Stream(scene.texture_seed, _COLOUR_STREAM_TAG)
    blotch_tile, strand_tile, grain_tile, bg_grain_tile = _noise_fields(size)
    ox, oy = rng.integer(size), rng.integer(size)
    window = (slice(oy, oy + size), slice(ox, ox + size))
    grain = grain_tile[window]

    # texture = 1 + grain + blotch amplitude x blotch + strand amplitude x strand (per material)
    texture = grain.copy()
    cv2.accumulateProduct(cv2.LUT(mat, _BLOTCH_LUT), blotch_tile[window], texture)
    cv2.accumulateProduct(cv2.LUT(mat, _STRAND_LUT), strand_tile[window], texture)

    shade = _head_shading(cam, scene)
    body = cv2.inRange(mat, _BODY_FIRST, _BODY_LAST)
    cv2.copyTo(cv2.repeat(_body_shading_row(cam, scene), size, 1), body, shade)
    if occluders:
        flat = cv2.inRange(mat, _FLAT_FIRST, _FLAT_LAST)
        shade[flat.view(bool)] = 0.7 + 0.5 * scene.lighting.ambient
    factor = cv2.multiply(shade, texture)

    bg = (mat == 0).view(np.uint8)  # (numpy's compare is ~3x cheaper than cv2.inRange here)
    field, gain = _background(rng, scene, bg_grain_tile[window])
    cv2.copyTo(gain, bg, factor)
    factor_u8 = cv2.convertScaleAbs(factor, alpha=_FACTOR_ONE)

    cast = np.array(scene.lighting.colour_cast, np.float32) * 255
    palette = np.zeros((256, 4), np.uint8)  # BGRA rows, looked up as one int32 per pixel
    palette[:NUM_MATERIALS, 2::-1] = np.minimum(np.rint(material_palette(scene, occluders) * cast), 255)  # >= 0
    packed = cv2.LUT(mat, palette.view(np.int32)[:, 0])  # one LUT call instead of one per channel
    base = cv2.cvtColor(packed.view(np.uint8).reshape(size, size, 4), cv2.COLOR_BGRA2BGR)
    cv2.copyTo(field, bg, base)
    return cv2.multiply(base, cv2.cvtColor(factor_u8, cv2.COLOR_GRAY2BGR), scale=1 / _FACTOR_ONE)
