"""Fixtures for the raw-image prep tests: a folder of real faces, their decoding variants and bad files.

Real faces come from packages already installed (scikit-image's astronaut and LFW subset,
matplotlib's grace_hopper.jpg); every bad-input kind the stage must survive is written next to them.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from data_prep.demo_images import png_bomb

# Hand-marked eye centres of scikit-image's astronaut (x, y), image-left eye first.
ASTRONAUT_EYES = np.array([[203.8, 101.3], [246.3, 103.3]])

# Outcome counts the fixture folder must produce (one entry per file kind below).
EXPECTED_OUTCOMES = {
    "ok": 11,  # astronaut, grace, 3 LFW faces, 6 decoding variants of the astronaut
    "empty_file": 1,
    "not_an_image": 2,  # a text file, random bytes named .jpg
    "truncated": 1,
    "too_large": 1,
    "too_small": 1,
    "no_face": 1,
}
ASTRONAUT_VARIANTS = (
    "real/astronaut.png",
    "variants/exif_rotated.jpg",
    "variants/cmyk.jpg",
    "variants/grey16.png",
    "variants/palette.png",
    "variants/grey.jpg",
    "variants/rgba.png",
)


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def grace_hopper_bytes() -> bytes:
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        return fh.read()


def lfw_face_on_canvas(index: int, side: int = 160, canvas: int = 320) -> np.ndarray:
    """An LFW 25x25 face upscaled and pasted on a grey canvas (a 'raw' photo with margin)."""
    from skimage import data

    face = (data.lfw_subset()[index] * 255).astype(np.uint8)
    big = np.asarray(Image.fromarray(face).resize((side, side), Image.BICUBIC))
    out = np.full((canvas, canvas), 120, np.uint8)
    o = (canvas - side) // 2
    out[o : o + side, o : o + side] = big
    return np.stack([out] * 3, axis=-1)


def exif_rotated_jpeg(upright: np.ndarray) -> bytes:
    """Pixels stored turned 90 degrees counter-clockwise, with EXIF orientation 6 saying how to undo it."""
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright, k=1)))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def build_fixture_folder(root: Path) -> Path:
    """Write every kind of input below ``root`` and return it."""
    for sub in ("real", "variants", "bad"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    astro = Image.fromarray(astronaut())
    astro.save(root / "real/astronaut.png")
    (root / "real/grace_hopper.jpg").write_bytes(grace_hopper_bytes())
    for i in (0, 20, 40):
        Image.fromarray(lfw_face_on_canvas(i)).save(root / f"real/lfw_{i:03d}.png")

    (root / "variants/exif_rotated.jpg").write_bytes(exif_rotated_jpeg(astronaut()))
    astro.convert("CMYK").save(root / "variants/cmyk.jpg", quality=95)
    grey16 = np.asarray(astro.convert("L")).astype(np.uint16) * 257
    Image.fromarray(grey16).save(root / "variants/grey16.png")
    astro.quantize(256).save(root / "variants/palette.png")
    astro.convert("L").save(root / "variants/grey.jpg", quality=95)
    rgba = np.dstack([astronaut(), np.full((512, 512), 255, np.uint8)])
    rgba[:, :40, 3] = 0  # a transparent strip at the left edge, far from the face
    Image.fromarray(rgba, "RGBA").save(root / "variants/rgba.png")

    (root / "bad/empty.jpg").write_bytes(b"")
    (root / "bad/notes.txt").write_text("not an image\n")
    (root / "bad/random.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    buf = io.BytesIO()
    astro.save(buf, format="JPEG", quality=90)
    (root / "bad/truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (root / "bad/bomb.png").write_bytes(png_bomb(40000, 40000))
    Image.fromarray(astronaut()[100:116, 200:216]).save(root / "bad/tiny.png")
    yy, xx = np.mgrid[0:300, 0:400]
    smooth = np.dstack([xx * 255 // 400, yy * 255 // 300, np.full_like(xx, 90)]).astype(np.uint8)
    Image.fromarray(smooth).save(root / "bad/faceless.png")
    return root


@pytest.fixture(scope="session")
def raw_folder(tmp_path_factory) -> Path:
    return build_fixture_folder(tmp_path_factory.mktemp("raw"))


def _prep_cli(argv: list[str]) -> int:
    """Run a ``pacofr-prep`` subcommand of data_prep.commands (independent of the other command modules)."""
    from data_prep import commands

    parser = argparse.ArgumentParser(prog="pacofr-prep")
    commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


@pytest.fixture(scope="session")
def prep_cli():
    """``prep_cli(argv) -> exit code`` for the raw-image prep subcommands."""
    return _prep_cli


@pytest.fixture(scope="session")
def prep_expected() -> SimpleNamespace:
    """What the fixture folder must give (test modules cannot import this conftest by name: the
    top-level tests/conftest.py would shadow it)."""
    return SimpleNamespace(
        astronaut_eyes=ASTRONAUT_EYES, outcomes=EXPECTED_OUTCOMES, astronaut_variants=ASTRONAUT_VARIANTS
    )


@pytest.fixture(scope="session")
def offline_run(raw_folder, tmp_path_factory) -> tuple[Path, dict]:
    """The whole fixture folder through the offline backend in two chunks, merged: (out dir, summary)."""
    from data_prep.merge import merge
    from data_prep.run import PrepConfig, run_chunk

    out = tmp_path_factory.mktemp("prepared")
    for index in range(2):
        cfg = PrepConfig(
            input=str(raw_folder), out=str(out), num_chunks=2, chunk_index=index, backend="offline",
            val_fraction=0.3, max_per_shard=4, batch_size=4, progress=False, decode_workers=2,
        )  # fmt: skip
        run_chunk(cfg)
    _, summary = merge(out)
    return out, summary
