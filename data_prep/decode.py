"""Robust image decoding: any file in, an upright RGB uint8 array out, or a :class:`BadImage` saying why not.

Handled: EXIF orientation; grey, grey+alpha, palette (with or without transparency), CMYK, YCbCr,
16-bit and 32-bit integer / float greys, RGBA (alpha composited on mid grey). Refused with a reason:
zero-byte files, files that are not images, truncated or corrupt data, images over the pixel limit
(decompression bombs: checked from the header before any pixel is decoded, and PIL's own guard is
kept on), images smaller than the minimum side.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000  # ~8000 x 8000: bigger real photos are rare; bombs are not
DEFAULT_MIN_SIDE = 32

# Reasons a file is skipped; the chunk report counts each.
REASONS = ("empty_file", "not_an_image", "truncated", "too_large", "too_small", "unreadable")


class BadImage(Exception):
    """A file that cannot become an RGB image; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # High bit depth grey: keep absolute levels (a dark 16-bit photo stays dark), not the data's
        # own min..max. 16-bit (and 32-bit data above 255) maps 0..65535 -> 0..255; else 0..255 as is.
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, (128, 128, 128, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, RGB, RGBX


def decode_image(
    path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = DEFAULT_MIN_SIDE
) -> np.ndarray:
    """Read ``path`` into an upright RGB uint8 (H, W, 3) array, or raise :class:`BadImage`."""
    try:
        size = os.path.getsize(path)
    except OSError as err:
        raise BadImage("unreadable", str(err)) from err
    if size == 0:
        raise BadImage("empty_file", "zero bytes")
    # PIL's guard raises for > 2x its limit and warns above it; keep both on, tied to our limit.
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise BadImage("too_large", f"{w}x{h} = {w * h} pixels > limit {max_pixels}")
                if min(w, h) < min_side:
                    raise BadImage("too_small", f"{w}x{h}, shorter side < {min_side}")
                img.load()
                img = ImageOps.exif_transpose(img)
                rgb = _to_rgb(img)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImage("too_large", str(err)) from err
    except UnidentifiedImageError as err:
        raise BadImage("not_an_image", "not a recognised image format") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        text = str(err)
        reason = (
            "truncated"
            if "truncated" in text or "broken data stream" in text or isinstance(err, EOFError)
            else "unreadable"
        )
        raise BadImage(reason, text or type(err).__name__) from err
    arr = np.asarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise BadImage("unreadable", f"decoded to shape {arr.shape}")
    return np.ascontiguousarray(arr)
