"""The light head that predicts each patch's region distribution from decoder tokens (the spatial loss's head)."""

from __future__ import annotations

import torch
from torch import nn

from pacofr.data.format import NUM_REGIONS


class SpatialHead(nn.Module):
    """LayerNorm + Linear: decoder tokens (B, N, D) -> region logits (B, N, NUM_REGIONS)."""

    def __init__(self, dim: int, num_regions: int = NUM_REGIONS):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, num_regions)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(tokens))
