"""Cheap closed-form probes as torchmetrics metrics, for watching a representation while it trains.

- :class:`RidgeProbe`: k-fold cross-validated ridge regression of continuous targets (head pose) from
  features; ``compute()`` gives the mean absolute error per target.
- :class:`KNNProbe`: leave-one-out k-nearest-neighbour classification (identity) by cosine similarity;
  ``compute()`` gives the accuracy.

Both keep every sample's features (``dist_reduce_fx="cat"``: all processes see the whole set at
``compute()``) and a sample ``index``, so the folds, the neighbours and the result do not depend on
how the set was split across processes; samples repeated by a padded sampler count once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def _unique_by_index(index: torch.Tensor, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Sort by sample index and keep the first copy of each index."""
    order = torch.argsort(index, stable=True)
    index = index[order]
    keep = torch.ones_like(index, dtype=torch.bool)
    keep[1:] = index[1:] != index[:-1]
    return tuple(v[order][keep] for v in values)


def ridge_fit(x: torch.Tensor, y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, ...]:
    """Standardise ``x`` (per feature, this set's statistics), centre ``y``, and solve
    ``min_w (1/n) |x w - y|^2 + alpha |w|^2``. Returns ``(x_mean, x_std, w, y_mean)``."""
    x, y = x.double(), y.double()
    x_mean, x_std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    xs = (x - x_mean) / x_std
    y_mean = y.mean(0)
    n, d = xs.shape
    gram = xs.T @ xs + n * alpha * torch.eye(d, dtype=xs.dtype, device=xs.device)
    w = torch.linalg.solve(gram, xs.T @ (y - y_mean))
    return x_mean, x_std, w, y_mean


def ridge_predict(x: torch.Tensor, fit: tuple[torch.Tensor, ...]) -> torch.Tensor:
    x_mean, x_std, w, y_mean = fit
    return ((x.double() - x_mean) / x_std) @ w + y_mean


class RidgeProbe(Metric):
    """Cross-validated ridge regression. ``update(features (B, D), targets (B, T), index (B,))``;
    ``compute()`` -> (T,) mean absolute error of the out-of-fold predictions.

    Fold of a sample = its rank in index order modulo ``num_folds``; each fold is predicted by a ridge
    fit on the others (features standardised on the training folds, ``alpha`` per sample)."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    def __init__(self, alpha: float = 1.0, num_folds: int = 4, **kwargs):
        super().__init__(**kwargs)
        if alpha <= 0:
            raise ValueError(f"ridge alpha must be > 0, got {alpha}")
        if num_folds < 2:
            raise ValueError(f"num_folds must be >= 2, got {num_folds}")
        self.alpha, self.num_folds = alpha, num_folds
        self.add_state("features", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")
        self.add_state("index", default=[], dist_reduce_fx="cat")

    def update(self, features: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> None:
        if targets.ndim == 1:
            targets = targets[:, None]
        if not features.shape[0] == targets.shape[0] == index.shape[0]:
            raise ValueError(f"batch sizes differ: {features.shape[0]}, {targets.shape[0]}, {index.shape[0]}")
        self.features.append(features.detach().float())
        self.targets.append(targets.detach().float())
        self.index.append(index.detach().long())

    def compute(self) -> torch.Tensor:
        x, y = _unique_by_index(dim_zero_cat(self.index), dim_zero_cat(self.features), dim_zero_cat(self.targets))
        if x.shape[0] < 2 * self.num_folds:
            raise ValueError(f"ridge probe needs >= {2 * self.num_folds} samples, has {x.shape[0]}")
        fold = torch.arange(x.shape[0], device=x.device) % self.num_folds
        errors = torch.empty_like(y, dtype=torch.float64)
        for f in range(self.num_folds):
            test = fold == f
            fit = ridge_fit(x[~test], y[~test], self.alpha)
            errors[test] = (ridge_predict(x[test], fit) - y[test].double()).abs()
        return errors.mean(0).float()


class KNNProbe(Metric):
    """Leave-one-out k-NN classification by cosine similarity. ``update(features (B, D), labels (B,),
    index (B,))``; ``compute()`` -> accuracy over the samples whose label occurs at least twice (the
    others have no right answer among their neighbours). The k neighbours vote; a tie goes to the label
    of the nearest one among the tied."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, k: int = 1, **kwargs):
        super().__init__(**kwargs)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.add_state("features", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")
        self.add_state("index", default=[], dist_reduce_fx="cat")

    def update(self, features: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> None:
        if not features.shape[0] == labels.shape[0] == index.shape[0]:
            raise ValueError(f"batch sizes differ: {features.shape[0]}, {labels.shape[0]}, {index.shape[0]}")
        self.features.append(features.detach().float())
        self.labels.append(labels.detach().long())
        self.index.append(index.detach().long())

    def compute(self) -> torch.Tensor:
        x, labels = _unique_by_index(dim_zero_cat(self.index), dim_zero_cat(self.features), dim_zero_cat(self.labels))
        n = x.shape[0]
        k = min(self.k, n - 1)
        if k < 1:
            raise ValueError("k-NN probe needs at least 2 samples")
        x = F.normalize(x.double(), dim=1)
        sim = x @ x.T
        sim.fill_diagonal_(float("-inf"))  # leave one out
        neighbours = sim.topk(k, dim=1).indices  # (n, k), nearest first
        votes = F.one_hot(labels[neighbours], int(labels.max()) + 1).sum(1).double()  # (n, classes)
        # tie-break: among labels with the most votes, the one whose first neighbour is nearest
        rank_of_first = torch.full_like(votes, float(k))
        for j in reversed(range(k)):
            rank_of_first[torch.arange(n), labels[neighbours[:, j]]] = j
        predicted = (votes - rank_of_first / (k + 1)).argmax(1)
        counts = torch.bincount(labels)
        answerable = counts[labels] >= 2
        if not answerable.any():
            raise ValueError("k-NN probe: no label occurs twice, accuracy is undefined")
        return (predicted == labels)[answerable].double().mean().float()
