"""How the probe reads an encoder: the whole patch sequence at once, or random 25 %-visible subsets.

The study's arms train their encoders on different sequence lengths: MAE and the hybrid PaCo-FR arms see a
quarter of the patches per image, the full-sequence arms all of them. A probe that feeds all patches reads
every encoder at the full-sequence arms' length, which favours them. So the probe reads two **views**:

- ``full``: every patch in one forward (what the study always did);
- ``subsets``: each face's patches split into random subsets of ``visible_fraction`` of the grid, each subset
  encoded alone (the encoder sees only those tokens, as in MAE pretraining); a patch's feature is its token
  where it was visible, averaged over the subsets that held it.

The subsets of one face form a *cover*: a random permutation of the patches cut into ``ceil(P / k)`` runs of
``k`` patches, the last run padded with other random patches of the face, so every patch is visible at least
once and every forward has exactly ``k`` patch tokens. ``covers`` > 1 draws more covers and averages them.
The draw depends only on ``seed`` and the face's position in the list, so every arm (and the clean and
occluded copies of a test face) is read through the same subsets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

VIEWS = ("full", "subsets")  # the readings a probe may take, in the order results list them


@dataclass(frozen=True)
class SubsetReading:
    """The ``subsets`` view: share of the patches visible per forward, covers per face, the draw's seed."""

    visible_fraction: float = 0.25
    covers: int = 1
    seed: int = 0

    def visible(self, patches: int) -> int:
        return max(1, min(patches, round(patches * self.visible_fraction)))


def draw_cover(patches: int, visible: int, generator: torch.Generator) -> torch.Tensor:
    """(ceil(patches / visible), visible) patch indices: a random partition of the patches into runs of
    ``visible``, the last run topped up with patches drawn from the other runs (no repeat inside a run)."""
    runs = math.ceil(patches / visible)
    order = torch.randperm(patches, generator=generator)
    missing = runs * visible - patches
    if missing:
        others = order[: (runs - 1) * visible]
        extra = others[torch.randperm(len(others), generator=generator)[:missing]]
        order = torch.cat([order, extra])
    return order.view(runs, visible)


def draw_subsets(faces: int, patches: int, reading: SubsetReading, generator: torch.Generator) -> torch.Tensor:
    """(faces, subsets, k) patch indices: ``reading.covers`` covers per face (see :func:`draw_cover`)."""
    k = reading.visible(patches)
    per_face = [torch.cat([draw_cover(patches, k, generator) for _ in range(reading.covers)]) for _ in range(faces)]
    return torch.stack(per_face)


def _patch_sequence(encoder: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, prefix + N, D): patch embeddings with their positions and the prefix (class) token, exactly as
    timm's ``forward_intermediates`` builds them before the first block."""
    x = encoder.patch_embed(images)
    if x.ndim == 4:  # an NHWC patch embed: the sequence is row-major
        x = x.flatten(1, 2)
    return encoder._pos_embed(x)


def _run_blocks(encoder: torch.nn.Module, x: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
    """The patch tokens after each block in ``layers`` (prefix dropped), concatenated: (B, K, len(layers) x D)."""
    x = encoder.norm_pre(encoder.patch_drop(x))
    taken = []
    for i, block in enumerate(encoder.blocks[: max(layers) + 1]):
        x = block(x)
        if i in layers:
            taken.append(x[:, encoder.num_prefix_tokens :])
    return torch.cat(taken, dim=-1)


@torch.no_grad()
def full_tokens(encoder: torch.nn.Module, images: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
    """(B, N, len(layers) x D): every patch in one forward."""
    return _run_blocks(encoder, _patch_sequence(encoder, images), layers).float()


@torch.no_grad()
def subset_tokens(
    encoder: torch.nn.Module, images: torch.Tensor, layers: Sequence[int], subsets: torch.Tensor
) -> torch.Tensor:
    """(B, N, len(layers) x D): each of the (B, S, k) ``subsets`` encoded alone (prefix + k tokens), every
    patch's tokens averaged over the subsets where it was visible."""
    sequence = _patch_sequence(encoder, images)
    b, s, k = subsets.shape
    prefix = encoder.num_prefix_tokens
    d = sequence.shape[-1]
    kept = sequence[:, prefix:].gather(1, subsets.reshape(b, s * k, 1).expand(-1, -1, d)).view(b * s, k, d)
    heads = sequence[:, :prefix].repeat_interleave(s, dim=0)  # the class token leads every subset
    tokens = _run_blocks(encoder, torch.cat([heads, kept], dim=1), layers).float().view(b, s * k, -1)
    patches = sequence.shape[1] - prefix
    flat = subsets.reshape(b, s * k)
    total = tokens.new_zeros(b, patches, tokens.shape[-1]).scatter_add_(
        1, flat.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]), tokens
    )
    seen = tokens.new_zeros(b, patches).scatter_add_(1, flat, torch.ones_like(flat, dtype=tokens.dtype))
    return total / seen.clamp_min(1).unsqueeze(-1)


class ViewReader:
    """Encode batches of images into every requested view; the subsets are drawn from one generator, so a
    list of faces read in the same order gets the same subsets whatever the encoder."""

    def __init__(self, encoder: torch.nn.Module, layers: Sequence[int], views: Sequence[str], reading: SubsetReading):
        unknown = [v for v in views if v not in VIEWS]
        if unknown or not views:
            raise ValueError(f"views must be a non-empty subset of {VIEWS}, got {list(views)}")
        self.encoder, self.layers, self.views, self.reading = encoder, list(layers), tuple(views), reading
        self.generator = torch.Generator().manual_seed(reading.seed)

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        if "full" in self.views:
            out["full"] = full_tokens(self.encoder, images, self.layers)
        if "subsets" in self.views:
            patches = self.encoder.patch_embed.num_patches
            subsets = draw_subsets(images.shape[0], patches, self.reading, self.generator)
            out["subsets"] = subset_tokens(self.encoder, images, self.layers, subsets)
        return out
