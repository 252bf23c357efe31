"""A folder of 'raw' demo photos built from faces that ship inside installed packages (no downloads).

Real faces: scikit-image's astronaut, a few of its LFW faces, matplotlib's grace_hopper.jpg (when
matplotlib is installed). Synthetic raw photos: those faces scaled, turned (up to +-12 degrees) and
pasted, one to three per picture, onto larger procedural backgrounds. Plus the awkward kinds a real
collection has: EXIF-rotated, CMYK, 16-bit grey, palette and RGBA copies, and bad files (empty,
truncated, not an image, a decompression bomb header, a faceless picture) so the demo's report
shows every outcome. Deterministic for a given seed.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _real_faces() -> dict[str, Image.Image]:
    from skimage import data

    faces = {"astronaut": Image.fromarray(data.astronaut())}
    lfw = data.lfw_subset()
    for i in (0, 20, 40, 50, 60, 80, 90):
        face = Image.fromarray((lfw[i] * 255).astype(np.uint8)).resize((200, 200), Image.BICUBIC)
        faces[f"lfw_{i:03d}"] = face.convert("RGB")
    try:
        from matplotlib import cbook

        with cbook.get_sample_data("grace_hopper.jpg") as fh:
            faces["grace_hopper"] = Image.open(io.BytesIO(fh.read())).convert("RGB")
    except ImportError:
        pass
    return faces


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth colour gradient plus low-frequency blobs and grain: no face-like structure."""
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    c0, c1 = rng.uniform(30, 220, 3), rng.uniform(30, 220, 3)
    t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) % 1.0
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    small = rng.normal(0, 25, (max(2, height // 64), max(2, width // 64), 3))
    blobs = np.asarray(
        Image.fromarray(np.clip(small + 128, 0, 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
    )
    img = img + (blobs.astype(float) - 128) + rng.normal(0, 4, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _face_patch(face: Image.Image, name: str) -> Image.Image:
    """The head region of a real photo (the astronaut and grace photos show more than the head)."""
    boxes = {"astronaut": (130, 10, 330, 230), "grace_hopper": (110, 60, 430, 400)}
    return face.crop(boxes[name]) if name in boxes else face


def _paste_faces(rng, faces: dict[str, Image.Image], count: int) -> Image.Image:
    width, height = int(rng.integers(480, 900)), int(rng.integers(400, 760))
    canvas = _background(rng, width, height)
    names = sorted(faces)
    slots = np.linspace(0, width, count + 1)
    for k in range(count):
        name = names[int(rng.integers(len(names)))]
        patch = _face_patch(faces[name], name)
        side = int(rng.uniform(0.55, 0.9) * min(slots[k + 1] - slots[k], height))
        angle = float(rng.uniform(-12, 12))
        patch = patch.resize((side, side), Image.BICUBIC).rotate(angle, Image.BICUBIC)
        mask = Image.new("L", patch.size, 255).rotate(angle, Image.BICUBIC)  # turned corners stay background
        x = int(slots[k] + rng.uniform(0, max(1, slots[k + 1] - slots[k] - side)))
        y = int(rng.uniform(0, max(1, height - side)))
        canvas.paste(patch, (x, y), mask)
    return canvas


def png_bomb(width: int = 50000, height: int = 50000) -> bytes:
    """A valid PNG header declaring a huge image (a decompression bomb) with a few bytes of data."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def write_demo_images(out: str | os.PathLike[str], num_synthetic: int = 24, seed: int = 0) -> dict[str, int]:
    """Write the demo folder; returns how many files of each kind were written."""
    out = Path(out)
    for sub in ("real", "synthetic", "variants", "bad"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    faces = _real_faces()
    for name, img in faces.items():
        img.save(out / "real" / f"{name}.png" if name.startswith("lfw") else out / "real" / f"{name}.jpg", quality=95)
    for i in range(num_synthetic):
        _paste_faces(rng, faces, count=int(rng.integers(1, 4))).save(
            out / "synthetic" / f"scene_{i:04d}.jpg", quality=92
        )

    astro = faces["astronaut"]
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(np.asarray(astro), k=1))).save(
        out / "variants/exif_rotated.jpg", quality=95, exif=exif.tobytes()
    )
    astro.convert("CMYK").save(out / "variants/cmyk.jpg", quality=95)
    Image.fromarray(np.asarray(astro.convert("L")).astype(np.uint16) * 257).save(out / "variants/grey16.png")
    astro.quantize(256).save(out / "variants/palette.png")
    astro.convert("RGBA").save(out / "variants/rgba.png")

    (out / "bad/empty.jpg").write_bytes(b"")
    (out / "bad/readme.txt").write_text("not an image\n")
    buf = io.BytesIO()
    astro.save(buf, format="JPEG", quality=90)
    (out / "bad/truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (out / "bad/bomb.png").write_bytes(png_bomb())
    _background(rng, 640, 480).save(out / "bad/no_face.jpg", quality=90)
    return {"real": len(faces), "synthetic": num_synthetic, "variants": 5, "bad": 5}
