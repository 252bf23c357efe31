"""Task heads on top of the ViT encoder.

Dense tasks (parsing, landmarks) read several blocks' patch features (timm
``forward_intermediates``, NCHW), fuse them with a 1x1 conv and upsample 4x (to stride 4 for a
patch-16 ViT), like FaRL's multi-level heads. Global tasks read the pooled final feature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiLayerNeck(nn.Module):
    """Concatenate L feature maps (B, C, h, w), project to ``dim``, upsample by ``2 ** stages``."""

    def __init__(self, embed_dim: int, num_layers: int, dim: int = 128, stages: int = 2):
        super().__init__()
        self.fuse = nn.Sequential(nn.Conv2d(embed_dim * num_layers, dim, 1), nn.GroupNorm(_groups(dim), dim), nn.GELU())
        ups = []
        for _ in range(stages):
            ups += [nn.ConvTranspose2d(dim, dim, 2, stride=2), nn.GroupNorm(_groups(dim), dim), nn.GELU()]
        self.up = nn.Sequential(*ups)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.up(self.fuse(torch.cat(features, dim=1)))


def _groups(dim: int) -> int:
    return next(g for g in (32, 16, 8, 4, 2, 1) if dim % g == 0)


class ParsingHead(nn.Module):
    """Per-pixel class logits at the input resolution."""

    def __init__(self, embed_dim: int, num_layers: int, num_classes: int, dim: int = 128):
        super().__init__()
        self.neck = MultiLayerNeck(embed_dim, num_layers, dim)
        self.classify = nn.Conv2d(dim, num_classes, 1)

    def forward(self, features: list[torch.Tensor], out_size: tuple[int, int]) -> torch.Tensor:
        logits = self.classify(self.neck(features))
        return F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)


class LandmarkHead(nn.Module):
    """One heatmap per point, decoded by soft-argmax into (x, y) in [0, 1] of the input image."""

    def __init__(self, embed_dim: int, num_layers: int, num_points: int, dim: int = 128):
        super().__init__()
        self.neck = MultiLayerNeck(embed_dim, num_layers, dim)
        self.heatmaps = nn.Conv2d(dim, num_points, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return soft_argmax(self.heatmaps(self.neck(features)))


def soft_argmax(heatmaps: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) logits -> (B, K, 2) expected (x, y) of the softmax, pixel centres in [0, 1]."""
    b, k, h, w = heatmaps.shape
    prob = heatmaps.flatten(2).float().softmax(-1).view(b, k, h, w)
    xs = (torch.arange(w, device=heatmaps.device, dtype=prob.dtype) + 0.5) / w
    ys = (torch.arange(h, device=heatmaps.device, dtype=prob.dtype) + 0.5) / h
    return torch.stack([(prob.sum(2) * xs).sum(-1), (prob.sum(3) * ys).sum(-1)], dim=-1)


class PooledHead(nn.Module):
    """LayerNorm (no affine: a probe should not rescale features) + linear, on the pooled feature."""

    def __init__(self, embed_dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim, elementwise_affine=False)
        self.linear = nn.Linear(embed_dim, out_dim)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(pooled))
