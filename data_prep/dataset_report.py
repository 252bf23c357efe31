"""Look at a prepared dataset: print its summary and write a contact sheet of crops with their maps."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from data_prep import chunks
from pacofr.data.format import KEY_IMAGE, KEY_META, KEY_SEG, LABEL_NAMES, read_manifest

# One colour per label id (CelebAMask-HQ-like), background transparent in the overlay.
PALETTE = np.array(
    [
        [0, 0, 0], [204, 153, 102], [153, 51, 0], [102, 51, 0], [0, 102, 255], [0, 204, 255], [255, 255, 0],
        [255, 0, 204], [204, 0, 255], [255, 204, 0], [255, 102, 0], [255, 0, 0], [204, 0, 51], [153, 0, 102],
        [0, 153, 51], [0, 255, 153], [102, 102, 102], [102, 0, 204], [0, 255, 255],
    ],
    np.uint8,
)  # fmt: skip


def overlay(rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend the label colours over the crop (background left as is)."""
    colour = PALETTE[np.clip(labels, 0, len(PALETTE) - 1)].astype(np.float32)
    mask = (labels > 0)[..., None]
    out = np.where(mask, (1 - alpha) * rgb + alpha * colour, rgb)
    return out.astype(np.uint8)


def iter_samples(root: str | os.PathLike[str], filenames: list[str], limit: int):
    """Yield up to ``limit`` (key, rgb, labels, meta) from the shards, in order."""
    n = 0
    for name in filenames:
        parts: dict[str, dict] = {}
        with tarfile.open(Path(root) / name) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                parts.setdefault(key, {})[ext] = tar.extractfile(member).read()
                sample = parts[key]
                if all(k in sample for k in (KEY_IMAGE, KEY_SEG, KEY_META)):
                    rgb = np.asarray(Image.open(io.BytesIO(sample[KEY_IMAGE])).convert("RGB"))
                    labels = np.asarray(Image.open(io.BytesIO(sample[KEY_SEG])))
                    yield key, rgb, labels, json.loads(sample[KEY_META])
                    del parts[key]
                    n += 1
                    if n >= limit:
                        return


def contact_sheet(samples: list[tuple[np.ndarray, np.ndarray]], columns: int = 8, tile: int = 128) -> Image.Image:
    """Grid of (crop | crop with map) pairs, ``tile`` pixels each."""
    rows = max(1, -(-len(samples) // columns))
    sheet = Image.new("RGB", (columns * 2 * tile, rows * tile), (32, 32, 32))
    for i, (rgb, labels) in enumerate(samples):
        r, c = divmod(i, columns)
        sheet.paste(Image.fromarray(rgb).resize((tile, tile), Image.BILINEAR), (2 * c * tile, r * tile))
        over = Image.fromarray(overlay(rgb, labels)).resize((tile, tile), Image.NEAREST)
        sheet.paste(over, ((2 * c + 1) * tile, r * tile))
    return sheet


def legend(width: int) -> Image.Image:
    img = Image.new("RGB", (width, 20), (32, 32, 32))
    draw = ImageDraw.Draw(img)
    x = 4
    for i, name in enumerate(LABEL_NAMES[1:], start=1):
        draw.rectangle([x, 5, x + 10, 15], fill=tuple(int(v) for v in PALETTE[i]))
        draw.text((x + 13, 4), name, fill=(230, 230, 230))
        x += 16 + 6 * len(name) + 8
    return img


def inspect_dataset(root: str | os.PathLike[str], sheet: str | None = None, num_samples: int = 32) -> dict:
    """Print counts, reasons and label-area statistics; write the contact sheet. Returns the summary."""
    root = Path(root)
    manifest = read_manifest(root)
    summary_file = root / chunks.SUMMARY_NAME
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    print(f"dataset {root}  format {manifest.format}  image_size {manifest.image_size}")
    for name, info in manifest.splits.items():
        print(f"  {name:5s} {info.num_samples:8d} samples in {len(info.filenames)} shards")
    prep = manifest.prep
    if prep:
        det, par = prep.get("detector", {}), prep.get("parser", {})
        print(f"  backend {prep.get('backend')}  detector {det.get('name')}  parser {par.get('name')}")
        print(f"  thresholds {prep.get('thresholds')}")
    if summary:
        print(f"inputs {summary['inputs']}  faces written {summary['faces_written']}")
        print("images by outcome:")
        for reason, n in sorted(summary["images"].items(), key=lambda kv: -kv[1]):
            print(f"  {reason:14s} {n}")
        if summary["faces_dropped"]:
            print(f"faces dropped: {summary['faces_dropped']}")
        print("label area (fraction of all crop pixels):")
        for name in LABEL_NAMES:
            frac = summary["label_area_fraction"].get(name, 0.0)
            print(f"  {name:10s} {frac:7.4f} {'#' * round(frac * 100)}")
    filenames = [f for info in manifest.splits.values() for f in info.filenames]
    samples = [(rgb, labels) for _, rgb, labels, _ in iter_samples(root, filenames, num_samples)]
    if samples:
        grid = contact_sheet(samples)
        full = Image.new("RGB", (grid.width, grid.height + 20))
        full.paste(grid, (0, 0))
        full.paste(legend(grid.width), (0, grid.height))
        sheet_path = Path(sheet) if sheet else root / "_contact_sheet.png"
        full.save(sheet_path)
        print(f"contact sheet: {sheet_path} ({len(samples)} faces)")
    return summary
