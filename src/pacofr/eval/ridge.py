"""Ridge regression whose strength is chosen on a held-out part of the training set.

Closed form, so a probe has no learning rate, epochs or initialisation to tune per arm: given the same
features it gives the same answer. Primal (``d <= n``: an eigendecomposition of the ``d x d`` Gram
matrix) or dual (``d > n``: of the ``n x n`` kernel), each decomposition shared by every strength tried.
Strengths are relative to the mean eigenvalue, so one grid serves features of any width and scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

RELATIVE_STRENGTHS = tuple(10.0 ** (k / 2) for k in range(-12, 5))  # 1e-6 ... 1e2


@dataclass
class RidgeFit:
    """``predict(x) = ((x - mean) / std) @ weight + y_mean`` (the dual form keeps ``weight`` primal too)."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    y_mean: torch.Tensor
    strength: float  # the chosen relative strength

    def predict(self, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        out = []
        for start in range(0, x.shape[0], chunk):
            xs = (x[start : start + chunk].double() - self.mean) / self.std
            out.append(xs @ self.weight + self.y_mean)
        return torch.cat(out).float()


def _standardise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = x.double()
    mean = x.mean(0)
    std = x.std(0, unbiased=False).clamp_min(1e-6)
    return (x - mean) / std, mean, std


class _Decomposition:
    """Eigendecomposition of standardised features, shared by every strength and target tried."""

    def __init__(self, xs: torch.Tensor):
        self.xs = xs
        n, d = xs.shape
        self.primal = d <= n
        evals, self.evecs = torch.linalg.eigh(xs.T @ xs if self.primal else xs @ xs.T)
        self.evals = evals.clamp_min(0)
        self.scale = self.evals.mean()

    def coefficients(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` in the eigenbasis: the weights are ``basis @ (coefficients / (evals + lam))``."""
        return self.evecs.T @ (self.xs.T @ y if self.primal else y)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of standardised ``x`` times the basis (the weights' space in eigen coordinates)."""
        return x @ self.evecs if self.primal else (x @ self.xs.T) @ self.evecs

    def inverse(self, strength: float) -> torch.Tensor:
        return 1.0 / (self.evals + strength * self.scale)

    def weights(self, y: torch.Tensor, strength: float) -> torch.Tensor:
        """Primal weights (d, t) of ``min |xs w - y|^2 + lam |w|^2``, ``lam = strength x mean eigenvalue``."""
        scaled = self.coefficients(y) * self.inverse(strength)[:, None]
        return self.evecs @ scaled if self.primal else self.xs.T @ (self.evecs @ scaled)


def _holdout_errors(
    part: _Decomposition, x_hold: torch.Tensor, y_fit: torch.Tensor, y_hold: torch.Tensor, strengths: tuple[float, ...]
) -> list[float]:
    """Mean squared held-out error per strength, without forming a prediction per strength:
    with ``h = x_hold @ basis`` and ``c`` the scaled coefficients, ``|h c - y|^2 = <h'h c, c> - 2 <h'y, c> + |y|^2``."""
    h = part.project(x_hold)
    gram, cross = h.T @ h, h.T @ y_hold
    coefficients = part.coefficients(y_fit)
    errors = []
    for strength in strengths:
        c = coefficients * part.inverse(strength)[:, None]
        sq = (gram @ c * c).sum() - 2 * (cross * c).sum() + (y_hold**2).sum()
        errors.append(float(sq) / y_hold.numel())
    return errors


def fit_ridge(
    x: torch.Tensor,
    targets: dict[str, torch.Tensor],
    generator: torch.Generator,
    holdout: float = 0.2,
    strengths: tuple[float, ...] = RELATIVE_STRENGTHS,
    groups: torch.Tensor | None = None,
) -> dict[str, RidgeFit]:
    """One fit per target (rows of ``x``). Each target's strength is the one with the lowest squared error
    on a random ``holdout`` share of the rows; then it is refitted on every row. ``groups`` (one id per
    row) keeps the rows of one group on one side of the split (all patches of one face)."""
    n = x.shape[0]
    ids = groups if groups is not None else torch.arange(n)
    unique = torch.unique(ids)
    chosen = unique[torch.randperm(len(unique), generator=generator)[: max(1, round(len(unique) * holdout))]]
    is_hold = torch.isin(ids, chosen)
    xs, mean, std = _standardise(x[~is_hold])
    x_hold = (x[is_hold].double() - mean) / std
    part = _Decomposition(xs)
    del xs
    best: dict[str, float] = {}
    for name, y in targets.items():
        y = y.double()
        y_mean = y[~is_hold].mean(0)
        errors = _holdout_errors(part, x_hold, y[~is_hold] - y_mean, y[is_hold] - y_mean, strengths)
        best[name] = strengths[min(range(len(errors)), key=errors.__getitem__)]
    del part, x_hold
    xs, mean, std = _standardise(x)
    whole = _Decomposition(xs)
    fits = {}
    for name, y in targets.items():
        y = y.double()
        y_mean = y.mean(0)
        fits[name] = RidgeFit(mean, std, whole.weights(y - y_mean, best[name]), y_mean, best[name])
    return fits
