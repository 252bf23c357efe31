"""Images <-> per-patch pixel vectors, and the per-patch normalised pixels that are both the
reconstruction target (MAE ``norm_pix_loss``) and the codebook's input."""

from __future__ import annotations

import torch
from einops import rearrange

# the mask budget is the maskers' rule; the model gathers exactly that many patches
from pacofr.data.batch import num_masked_patches  # noqa: F401  (re-exported)


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C), patches row-major, pixels ordered (row, col, channel) like MAE."""
    _, _, h, w = images.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {patch_size}")
    return rearrange(images, "b c (h p) (w q) -> b (h w) (p q c)", p=patch_size, q=patch_size)


def unpatchify(patches: torch.Tensor, patch_size: int, grid_size: tuple[int, int], channels: int = 3) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, N, p*p*C) -> (B, C, H, W)."""
    gh, gw = grid_size
    if patches.shape[1] != gh * gw or patches.shape[2] != patch_size * patch_size * channels:
        raise ValueError(
            f"patches {tuple(patches.shape)} do not fit grid {grid_size}, patch {patch_size}, C={channels}"
        )
    return rearrange(patches, "b (h w) (p q c) -> b c (h p) (w q)", h=gh, w=gw, p=patch_size, q=patch_size, c=channels)


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch zero mean / unit variance (MAE's norm-pix target: unbiased variance, ``sqrt(var + eps)``).

    Computed in float32 whatever the input dtype, because bf16 variances of flat patches are too coarse.
    """
    x = patches.float()
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True)
    return (x - mean) / (var + eps).sqrt()
