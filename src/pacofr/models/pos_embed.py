"""Fixed 2D sin-cos position embeddings (MAE keeps them frozen; they need no training and resize exactly)."""

from __future__ import annotations

import torch
from timm.layers import build_sincos2d_pos_embed


def sincos_pos_embed_2d(dim: int, grid_size: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """Return (1, num_prefix_tokens + H*W, dim): zeros for the prefix (class) slots, then row-major patches.

    Built with timm's ``build_sincos2d_pos_embed`` (temperature 10000, sin/cos of the row and column
    coordinates), so the layout matches the row-major patch order of ``PatchEmbed`` and ``patchify``.
    """
    if dim % 4 != 0:
        raise ValueError(f"2D sin-cos position embedding needs a dim divisible by 4, got {dim}")
    grid = build_sincos2d_pos_embed(list(grid_size), dim=dim)  # (H*W, dim)
    prefix = torch.zeros(num_prefix_tokens, dim, dtype=grid.dtype)
    return torch.cat([prefix, grid], dim=0).unsqueeze(0)
