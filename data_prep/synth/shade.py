"""Colour the pixels of a rasterised face from its material map.

Each pixel = base colour of its material x shading (Lambert on the head ellipsoid, a cylinder for
the neck and clothes, flat for the background and occluders) x texture noise x colour cast, so
colours change only where materials (hence labels) change, plus smooth shading and fine texture.
"""

from __future__ import annotations

import cv2
import numpy as np

from data_prep.synth.occluders import OCCLUDER_MATERIALS
from data_prep.synth.scene import MATERIAL_IRIS, MATERIAL_LASH, MATERIAL_PUPIL, MATERIAL_TEETH, NUM_MATERIALS, Scene
from data_prep.synth.template3d import Camera, head_axes

_SHADE_FLAT, _SHADE_HEAD, _SHADE_BODY = 0, 1, 2


def material_palette(scene: Scene, occluders: list[dict]) -> np.ndarray:
    """(NUM_MATERIALS, 3) base colours in 0..1 for this scene."""
    idp = scene.identity
    skin = np.array(idp.skin_rgb)
    hair = np.array(idp.hair_rgb)
    pal = np.zeros((NUM_MATERIALS, 3))
    brow = 0.55 * hair + 0.45 * skin * 0.4 if idp.hair_style != "bald" else skin * 0.45
    pal[1] = skin
    pal[2] = pal[3] = brow
    pal[4] = pal[5] = np.array([0.93, 0.91, 0.88])  # sclera
    pal[6] = np.array(scene.accessory_rgb) * 0.5
    pal[7] = pal[8] = skin * np.array([0.95, 0.86, 0.84])
    pal[9] = scene.accessory_rgb
    pal[10] = np.clip(skin * np.array([1.04, 0.95, 0.93]), 0, 1)
    pal[11] = np.array([0.35, 0.08, 0.09])
    pal[12] = idp.lip_rgb
    pal[13] = np.clip(np.array(idp.lip_rgb) * 1.1, 0, 1)
    pal[14] = skin * 0.84
    pal[15] = scene.accessory_rgb
    pal[16] = scene.cloth_rgb
    pal[17] = hair
    pal[18] = scene.hat_rgb
    pal[MATERIAL_IRIS] = idp.eye_rgb
    pal[MATERIAL_PUPIL] = (0.03, 0.03, 0.03)
    pal[MATERIAL_TEETH] = (0.9, 0.88, 0.8)
    pal[MATERIAL_LASH] = skin * 0.35
    for occ in occluders:
        pal[OCCLUDER_MATERIALS[occ["kind"]]] = occ["colour"]
    return pal.astype(np.float32)


# per material: shading kind and texture amplitudes (blotches, fine grain, hair strands)
_SHADE_KIND = np.full(NUM_MATERIALS, _SHADE_HEAD, np.uint8)
_SHADE_KIND[[0]] = _SHADE_FLAT
_SHADE_KIND[[14, 15, 16]] = _SHADE_BODY
_SHADE_KIND[23:] = _SHADE_FLAT
_BLOTCH = np.zeros(NUM_MATERIALS, np.float32)
_BLOTCH[[1, 7, 8, 10, 14]] = 0.05
_BLOTCH[[16, 18, 24]] = 0.12
_BLOTCH[23] = 0.05
_FINE = np.full(NUM_MATERIALS, 0.015, np.float32)
_FINE[[16, 18]] = 0.04
_STRAND = np.zeros(NUM_MATERIALS, np.float32)
_STRAND[17] = 0.3
_STRAND[[2, 3]] = 0.15
_STRAND[MATERIAL_IRIS] = 0.25

_GRID_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}
_NOISE_CACHE: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
# Shading is smooth: compute it on a coarse grid and upsample.
_SHADE_GRID = 64


def _coarse_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    if size not in _GRID_CACHE:
        n = min(size, _SHADE_GRID)
        coords = (np.arange(n, dtype=np.float32) + 0.5) * (size / n) - 0.5
        _GRID_CACHE[size] = (coords[None, :].repeat(n, 0), coords[:, None].repeat(n, 1))
    return _GRID_CACHE[size]


def _noise_fields(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blotch, hair-strand and fine-grain noise tiles of 2S x 2S (fixed seed, built once per size);
    each sample takes a window at a random offset, which is cheap and deterministic."""
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
        _NOISE_CACHE[size] = (blotch, strand, fine)
    return _NOISE_CACHE[size]


def _head_shading(cam: Camera, scene: Scene) -> np.ndarray:
    """Lambert shading of the (inflated) head ellipsoid under the scene light, full resolution."""
    gx, gy = _coarse_grid(scene.size)
    x = (gx - cam.center[0]) / cam.pixels_per_unit
    y = (gy - cam.center[1]) / cam.pixels_per_unit
    a, b, c = (s * 1.1 for s in head_axes(scene.identity))
    m = ((cam.rotation * np.array([1 / a**2, 1 / b**2, 1 / c**2])) @ cam.rotation.T).astype(np.float32)
    qb = m[0, 2] * x + m[1, 2] * y
    qc = m[0, 0] * x * x + 2 * m[0, 1] * x * y + m[1, 1] * y * y - 1
    z = (-qb + np.sqrt(np.maximum(qb * qb - m[2, 2] * qc, 0))) / m[2, 2]
    light = np.array(scene.lighting.direction, np.float32)
    nx = m[0, 0] * x + m[0, 1] * y + m[0, 2] * z
    ny = m[1, 0] * x + m[1, 1] * y + m[1, 2] * z
    nz = m[2, 0] * x + m[2, 1] * y + m[2, 2] * z
    lam = (nx * light[0] + ny * light[1] + nz * light[2]) / np.sqrt(nx * nx + ny * ny + nz * nz + 1e-12)
    amb = scene.lighting.ambient
    shade = (amb + (1 - amb) * np.clip(lam, 0, 1)).astype(np.float32)
    return cv2.resize(shade, (scene.size, scene.size), interpolation=cv2.INTER_LINEAR)


def _body_shading(cam: Camera, scene: Scene) -> np.ndarray:
    xs = (np.arange(scene.size, dtype=np.float32) - cam.center[0]) / (2.4 * cam.pixels_per_unit)
    xs = np.clip(xs, -0.95, 0.95)
    light = scene.lighting.direction
    lam = np.clip(xs * light[0] + np.sqrt(1 - xs * xs) * light[2], 0, 1)
    amb = scene.lighting.ambient
    return np.broadcast_to((amb + (1 - amb) * lam).astype(np.float32)[None, :], (scene.size, scene.size))


def _background(rng: np.random.Generator, scene: Scene, fine: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Background: a smooth muted colour field per channel (S, S) and a brightness gain (S, S) with
    grain and, depending on the scene, a gradient or stripes."""
    size = scene.size
    grey = rng.uniform(0.2, 0.8)
    base = (grey + rng.uniform(0.35, 0.7) * (rng.uniform(0.05, 0.95, (4, 4, 3)) - grey)).astype(np.float32)
    smooth = cv2.resize(base, (16, 16), interpolation=cv2.INTER_CUBIC)
    fields = [
        cv2.resize(np.ascontiguousarray(smooth[..., c]), (size, size), interpolation=cv2.INTER_LINEAR) for c in range(3)
    ]
    gain = 1 + 0.04 * fine
    if scene.background == "stripes":
        period = rng.uniform(0.05, 0.2) * size
        ang = rng.uniform(0, np.pi)
        k = 2 * np.pi / period
        t = np.arange(size, dtype=np.float32)
        ax, ay = t * np.float32(k * np.cos(ang)), t * np.float32(k * np.sin(ang))
        # sin(ax + ay) without a full-size sin: sin ax cos ay + cos ax sin ay
        gain += 0.12 * (np.outer(np.cos(ay), np.sin(ax)) + np.outer(np.sin(ay), np.cos(ax)))
    elif scene.background == "gradient":
        ramp = np.linspace(-0.25, 0.25, size, dtype=np.float32)
        gain += ramp[:, None] if rng.random() < 0.5 else ramp[None, :]
    return fields, gain


def _lut(values: np.ndarray) -> np.ndarray:
    lut = np.zeros((256,) + values.shape[1:], values.dtype)
    lut[: len(values)] = values
    return lut


def colourise(mat: np.ndarray, cam: Camera, scene: Scene, occluders: list[dict]) -> np.ndarray:
    """Colour every pixel from its material: base colour x shading x texture (x colour cast)."""
    size = scene.size
    rng = np.random.default_rng([scene.texture_seed, 0x7E7])
    blotch_tile, strand_tile, fine_tile = _noise_fields(size)
    ox, oy = (int(v) for v in rng.integers(0, size, 2))
    blotch = blotch_tile[oy : oy + size, ox : ox + size]
    strand = strand_tile[oy : oy + size, ox : ox + size]
    fine = fine_tile[oy : oy + size, ox : ox + size]

    kind = cv2.LUT(mat, _lut(_SHADE_KIND))
    shade = _head_shading(cam, scene)
    shade = np.where(kind == _SHADE_BODY, _body_shading(cam, scene), shade)
    flat = np.float32(0.7 + 0.5 * scene.lighting.ambient)
    shade = np.where(kind == _SHADE_FLAT, flat, shade)
    texture = (
        1
        + cv2.LUT(mat, _lut(_BLOTCH)) * blotch
        + cv2.LUT(mat, _lut(_STRAND)) * strand
        + cv2.LUT(mat, _lut(_FINE)) * fine
    )
    factor = shade * texture
    bg = (mat == 0).view(np.uint8)
    fields, gain = _background(rng, scene, fine)
    cv2.copyTo(gain, bg, factor)
    cast = np.array(scene.lighting.colour_cast, np.float32) * 255
    palette = material_palette(scene, occluders)
    channels = []
    for c in range(3):  # per channel on 2D arrays: cheaper than broadcasting over (S, S, 3) floats
        base = cv2.LUT(mat, _lut(palette[:, c].astype(np.float32)))
        cv2.copyTo(fields[c], bg, base)
        channels.append(cv2.convertScaleAbs(base * factor, alpha=float(cast[c])))
    return cv2.merge(channels)
