"""Named model sizes: encoder widths (the standard ViT family, each with its timm name) and decoder defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pacofr.models.encoder import PaCoFREncoder

# the names configs use; one registry for models/ and eval/ (eval rebuilds encoders through timm_name)
SizeName = Literal["tiny", "small", "base", "large", "huge"]


@dataclass(frozen=True)
class EncoderSize:
    embed_dim: int
    depth: int
    num_heads: int
    timm_family: str  # e.g. "vit_base"; the timm name adds the patch and image size
    timm_patch: int = 16  # the patch size of timm's registered model of this family (ViT-H: 14)

    def timm_name(self, patch_size: int | None = None, img_size: int = 224) -> str:
        """timm's registered name with the same architecture (pass ``img_size`` and ``patch_size`` to
        ``create_model`` when they differ from the name's); default: the family's registered patch size."""
        return f"{self.timm_family}_patch{patch_size or self.timm_patch}_{img_size}"


@dataclass(frozen=True)
class DecoderSize:
    dim: int
    depth: int
    num_heads: int


ENCODER_SIZES: dict[str, EncoderSize] = {
    "tiny": EncoderSize(192, 12, 3, "vit_tiny"),
    "small": EncoderSize(384, 12, 6, "vit_small"),
    "base": EncoderSize(768, 12, 12, "vit_base"),
    "large": EncoderSize(1024, 24, 16, "vit_large"),
    "huge": EncoderSize(1280, 32, 16, "vit_huge", timm_patch=14),  # ViT-H/14 (patch_size 14 on the data side)
}

# MAE's 8x512 decoder for base/large; narrower ones for the small encoders (tiny is the CPU test size).
DECODER_DEFAULTS: dict[str, DecoderSize] = {
    "tiny": DecoderSize(128, 4, 4),
    "small": DecoderSize(256, 4, 8),
    "base": DecoderSize(512, 8, 16),
    "large": DecoderSize(512, 8, 16),
    "huge": DecoderSize(512, 8, 16),
}


def encoder_size(size: str) -> EncoderSize:
    if size not in ENCODER_SIZES:
        raise ValueError(f"unknown encoder size {size!r}; choose one of {sorted(ENCODER_SIZES)}")
    return ENCODER_SIZES[size]


def timm_name(size: str, patch_size: int | None = None) -> str:
    """The timm model name whose architecture equals ``size`` (a registered one: give ``create_model`` the
    patch and image size when they differ); 224 is only its default input."""
    return encoder_size(size).timm_name(patch_size, 224)


def build_encoder(size: str, img_size: int = 224, patch_size: int = 16, **kwargs: Any) -> PaCoFREncoder:
    """The encoder of a named size; extra kwargs go to timm's VisionTransformer (e.g. drop_path_rate)."""
    spec = encoder_size(size)
    return PaCoFREncoder(
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=spec.embed_dim,
        depth=spec.depth,
        num_heads=spec.num_heads,
        **kwargs,
    )
