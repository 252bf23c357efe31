"""Verification through a linear projection learned on the probe's training identities (closed form).

A fixed cosine of the mean token scores an encoder by how much identity dominates its features; it cannot
tell an encoder that carries identity along with strong nuisance directions (pose, lighting) from one that
carries none. The learned head is Fisher's LDA: whiten by the within-identity scatter (shrunk towards a
multiple of the identity, since the probe's faces give fewer within-identity degrees of freedom than
dimensions), keep the ``rank`` directions with the most between-identity spread, compare faces by the cosine
in that space. Shrinkage and rank are chosen on held-out *identities* of the training faces (ROC AUC of
same / different pairs), so the choice, like the ridge strengths, is the probe's and the same for every arm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SHRINKAGES = (0.001, 0.01, 0.1, 0.3, 1.0)  # weight of the scaled identity in the within-identity scatter
RANKS = (2, 4, 8, 16, 32, 64, 128, 256, 0)  # discriminant directions kept (0: all)
HOLDOUT = 0.25  # share of the repeated training identities held out to choose them
MIN_HELD_OUT = 4  # fewer repeated held-out identities than this: no choice, the defaults below
DEFAULT = (0.1, 0)


@dataclass
class Projection:
    """``(x - mean) @ matrix``: features (standardised by the caller) into the discriminant space."""

    mean: torch.Tensor  # (d,)
    matrix: torch.Tensor  # (d, r)
    shrinkage: float
    rank: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.double() - self.mean) @ self.matrix


def scatter(x: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(within-identity covariance, between-identity scatter, mean) of rows ``x`` (n, d) with labels ``ids``."""
    x = x.double()
    _, inverse, counts = torch.unique(ids, return_inverse=True, return_counts=True)
    means = torch.zeros(len(counts), x.shape[1], dtype=x.dtype).index_add_(0, inverse, x) / counts[:, None]
    centred = x - means[inverse]
    within = centred.T @ centred / max(x.shape[0] - len(counts), 1)  # singletons add nothing and cost no dof
    mean = x.mean(0)
    spread = (means - mean) * counts.double().sqrt()[:, None]
    return within, spread.T @ spread / x.shape[0], mean


class Discriminants:
    """LDA directions of one (within, between) scatter pair for any shrinkage: shrinking towards a multiple of
    the identity keeps the within scatter's eigenvectors, so one eigendecomposition serves every shrinkage."""

    def __init__(self, within: torch.Tensor, between: torch.Tensor):
        self.evals, self.evecs = torch.linalg.eigh(within)
        self.level = (self.evals.mean()).clamp_min(1e-12)  # trace / d: the identity the scatter shrinks to
        self.between = between

    def directions(self, shrinkage: float) -> torch.Tensor:
        """(d, d) columns sorted by between / within spread: whitening by the shrunk within scatter, then the
        principal axes of the whitened between scatter."""
        shrunk = (1 - shrinkage) * self.evals.clamp_min(0) + shrinkage * self.level
        whiten = self.evecs / shrunk.clamp_min(shrunk.max() * 1e-10).sqrt()
        _, axes = torch.linalg.eigh(whiten.T @ self.between @ whiten)
        return whiten @ axes.flip(-1)  # eigh sorts ascending


def fit(x: torch.Tensor, ids: torch.Tensor, shrinkage: float, rank: int) -> Projection:
    within, between, mean = scatter(x, ids)
    directions = Discriminants(within, between).directions(shrinkage)
    keep = rank if 0 < rank < directions.shape[1] else directions.shape[1]
    return Projection(mean, directions[:, :keep], shrinkage, rank)


def pair_auc(features: torch.Tensor, ids: torch.Tensor, generator: torch.Generator) -> float:
    """ROC AUC of the cosine similarity: every same-identity pair against as many random different pairs."""
    unit = torch.nn.functional.normalize(features.double(), dim=1)
    a, b = torch.triu_indices(len(ids), len(ids), offset=1)
    same = ids[a] == ids[b]
    pos = (unit[a[same]] * unit[b[same]]).sum(1)
    different = (~same).nonzero().squeeze(1)
    pick = different[torch.randperm(len(different), generator=generator)[: max(len(pos), 1)]]
    neg = (unit[a[pick]] * unit[b[pick]]).sum(1)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return float((pos[:, None] > neg[None, :]).double().mean() + 0.5 * (pos[:, None] == neg[None, :]).double().mean())


def split_identities(ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
    """Boolean mask of the held-out faces: :data:`HOLDOUT` of the identities with two or more faces."""
    values, counts = torch.unique(ids, return_counts=True)
    repeated = values[counts > 1]
    held = repeated[torch.randperm(len(repeated), generator=generator)[: round(len(repeated) * HOLDOUT)]]
    return torch.isin(ids, held) if len(held) >= MIN_HELD_OUT else None


def choose(x: torch.Tensor, ids: torch.Tensor, generator: torch.Generator) -> tuple[float, int, dict[str, float]]:
    """(shrinkage, rank, AUC per tried setting) with the best held-out AUC; the defaults without held-out faces."""
    held = split_identities(ids, generator)
    if held is None:
        return (*DEFAULT, {})
    within, between, mean = scatter(x[~held], ids[~held])
    discriminants = Discriminants(within, between)
    tried: dict[str, float] = {}
    for shrinkage in SHRINKAGES:
        directions = discriminants.directions(shrinkage)
        projected = (x[held].double() - mean) @ directions
        for rank in RANKS:
            if rank < directions.shape[1]:
                keep = projected[:, :rank] if rank else projected
                tried[f"{shrinkage}/{rank}"] = pair_auc(keep, ids[held], torch.Generator().manual_seed(0))
    best = max(tried, key=lambda k: (tried[k], -SHRINKAGES.index(float(k.split("/")[0]))))
    shrinkage, rank = best.split("/")
    return float(shrinkage), int(rank), tried


def fit_projection(x: torch.Tensor, ids: torch.Tensor, generator: torch.Generator) -> Projection:
    """LDA on all of ``x`` (n, d) with the shrinkage and rank chosen on held-out identities."""
    shrinkage, rank, _ = choose(x, ids, generator)
    return fit(x, ids, shrinkage, rank)
