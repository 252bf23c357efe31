"""Benchmark metrics: parsing F1, landmark NME, head-pose MAE, 10-fold verification accuracy.

F1 and accuracy come from torchmetrics; NME, pose MAE and the verification protocol are custom
torchmetrics ``Metric`` subclasses so that they accumulate over batches and reduce over DDP ranks
like the rest. Functional versions sit next to each class for tests and one-off use.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.classification import MulticlassF1Score
from torchmetrics.utilities import dim_zero_cat

# ----------------------------------------------------------------------------------------------
# Face parsing: per-class F1 over the whole test set (one confusion matrix), mean over foreground.


class ParsingF1(MulticlassF1Score):
    """Per-class F1 accumulated over all pixels of the split (FaRL's protocol), with a foreground mean.

    ``update(preds, target)``: ``preds`` (B, H, W) label ids or (B, C, H, W) scores, ``target`` (B, H, W).
    :meth:`summary` turns the computed per-class vector into ``{"f1_mean": ..., "f1/<name>": ...}``.
    """

    def __init__(self, label_names: Sequence[str], background: int | None = 0, **kwargs):
        super().__init__(num_classes=len(label_names), average="none", **kwargs)
        self.label_names = tuple(label_names)
        self.background = background

    def summary(self) -> dict[str, float]:
        return f1_summary(self.compute(), self.label_names, self.background)


def f1_summary(per_class: torch.Tensor, label_names: Sequence[str], background: int | None = 0) -> dict[str, float]:
    """``{"f1_mean": mean over classes except background, "f1/<name>": each class}``."""
    values = per_class.detach().double().cpu().tolist()
    out = {f"f1/{name}": v for name, v in zip(label_names, values)}
    fg = [v for i, v in enumerate(values) if i != background]
    out["f1_mean"] = float(sum(fg) / len(fg))
    return out


# ----------------------------------------------------------------------------------------------
# Landmarks: normalised mean error.


def inter_ocular(landmarks: torch.Tensor, left: int | Sequence[int], right: int | Sequence[int]) -> torch.Tensor:
    """Distance between two landmarks (or the means of two landmark sets) per sample: (B, K, 2) -> (B,)."""
    left = [left] if isinstance(left, int) else list(left)
    right = [right] if isinstance(right, int) else list(right)
    return (landmarks[:, left].mean(1) - landmarks[:, right].mean(1)).norm(dim=-1)


def box_size(boxes: torch.Tensor) -> torch.Tensor:
    """``sqrt(w * h)`` of (B, 4) ``x1, y1, x2, y2`` boxes (FaRL's ``NormalizeByBox``)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return (w * h).sqrt()


def box_diagonal(boxes: torch.Tensor) -> torch.Tensor:
    """``sqrt(w^2 + h^2)`` of (B, 4) ``x1, y1, x2, y2`` boxes (FaRL's ``NormalizeByBoxDiag``)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return (w * w + h * h).sqrt()


def nme_per_sample(pred: torch.Tensor, target: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """Mean over points of the point-to-point error divided by ``norm``: (B, K, 2) x2, (B,) -> (B,)."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} landmarks differ")
    if (norm <= 0).any():
        raise ValueError("NME normaliser must be positive for every sample")
    return (pred - target).norm(dim=-1).mean(-1) / norm


class NME(Metric):
    """Mean of per-sample NMEs (FaRL / HRNet convention: average the per-sample means).

    Also keeps the per-sample values for the failure rate and the CED AUC at ``threshold``.
    """

    full_state_update = False

    def __init__(self, threshold: float = 0.10, **kwargs):
        super().__init__(**kwargs)
        self.threshold = threshold
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def update(self, pred: torch.Tensor, target: torch.Tensor, norm: torch.Tensor) -> None:
        self.values.append(nme_per_sample(pred.float(), target.float(), norm.float()))

    def compute(self) -> dict[str, torch.Tensor]:
        values = dim_zero_cat(self.values)
        return {
            "nme": values.mean(),
            f"fr@{self.threshold:g}": (values > self.threshold).float().mean(),
            f"auc@{self.threshold:g}": ced_auc(values, self.threshold),
        }


def ced_auc(nmes: torch.Tensor, threshold: float, steps: int = 1000) -> torch.Tensor:
    """Area under the cumulative error distribution up to ``threshold``, divided by ``threshold``."""
    xs = torch.linspace(0.0, threshold, steps + 1, dtype=torch.float64, device=nmes.device)
    ced = (nmes.double()[None, :] <= xs[:, None]).double().mean(1)
    return torch.trapezoid(ced, xs) / threshold


# ----------------------------------------------------------------------------------------------
# Head pose: mean absolute error in degrees.

POSE_AXES = ("yaw", "pitch", "roll")


class PoseMAE(Metric):
    """Mean absolute error per axis, in degrees; ``update(pred, target)`` with (B, 3) yaw, pitch, roll."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("abs_sum", default=torch.zeros(3, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.shape != target.shape or pred.shape[-1] != 3:
            raise ValueError(f"pose prediction {tuple(pred.shape)} and target {tuple(target.shape)} must be (B, 3)")
        self.abs_sum += (pred.double() - target.double()).abs().sum(0)
        self.count += pred.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        per_axis = self.abs_sum / self.count.clamp(min=1)
        out = {f"mae/{axis}": per_axis[i] for i, axis in enumerate(POSE_AXES)}
        out["mae"] = per_axis.mean()
        return out


# ----------------------------------------------------------------------------------------------
# Verification: 10-fold accuracy, threshold chosen on the 9 other folds (the LFW / insightface protocol).

INSIGHTFACE_THRESHOLDS = np.arange(0.0, 4.0, 0.01)  # on squared L2 distance of unit embeddings, in [0, 4]


def verification_accuracy(
    distances: np.ndarray,
    issame: np.ndarray,
    n_folds: int = 10,
    thresholds: np.ndarray = INSIGHTFACE_THRESHOLDS,
) -> tuple[float, float, np.ndarray]:
    """k-fold accuracy: for each fold pick the threshold with the best accuracy on the other folds
    (first one on ties), then score the held-out fold. Folds are contiguous, unshuffled, as in
    insightface (``KFold(n_splits=10, shuffle=False)``): pair i belongs to fold ``i * k // n`` blocks.

    A pair is predicted "same" when ``distance < threshold``. Returns ``(mean, std, per-fold acc)``.
    """
    distances = np.asarray(distances, dtype=np.float64).reshape(-1)
    issame = np.asarray(issame, dtype=bool).reshape(-1)
    n = len(distances)
    if n != len(issame) or n < n_folds:
        raise ValueError(f"need as many labels as distances and at least {n_folds} pairs (got {n}, {len(issame)})")
    # (T, N) correctness of every threshold on every pair, computed once.
    correct = (distances[None, :] < thresholds[:, None]) == issame[None, :]
    fold_of = _kfold_ids(n, n_folds)
    accs = np.empty(n_folds)
    for k in range(n_folds):
        held = fold_of == k
        best = int(np.argmax(correct[:, ~held].mean(1)))
        accs[k] = correct[best, held].mean()
    return float(accs.mean()), float(accs.std()), accs


def _kfold_ids(n: int, n_folds: int) -> np.ndarray:
    # sklearn KFold: the first n % k folds get one extra sample.
    sizes = np.full(n_folds, n // n_folds)
    sizes[: n % n_folds] += 1
    return np.repeat(np.arange(n_folds), sizes)


def pair_distance(emb_a: torch.Tensor, emb_b: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance of the L2-normalised embeddings (in [0, 4]): the insightface score."""
    a = torch.nn.functional.normalize(emb_a.float(), dim=-1)
    b = torch.nn.functional.normalize(emb_b.float(), dim=-1)
    return (a - b).pow(2).sum(-1)


class VerificationAccuracy(Metric):
    """Collects pair distances and labels; computes the 10-fold accuracy at the end.

    Pairs must arrive in dataset order (the folds are contiguous blocks of pairs); ``index`` gives
    each pair's position so the order survives shuffled or DDP-split loaders.
    """

    full_state_update = False

    def __init__(self, n_folds: int = 10, **kwargs):
        super().__init__(**kwargs)
        self.n_folds = n_folds
        self.add_state("distances", default=[], dist_reduce_fx="cat")
        self.add_state("issame", default=[], dist_reduce_fx="cat")
        self.add_state("index", default=[], dist_reduce_fx="cat")

    def update(self, emb_a: torch.Tensor, emb_b: torch.Tensor, issame: torch.Tensor, index: torch.Tensor) -> None:
        self.distances.append(pair_distance(emb_a, emb_b))
        self.issame.append(issame.bool())
        self.index.append(index.long())

    def compute(self) -> dict[str, torch.Tensor]:
        # np.unique sorts by pair index and drops the duplicates a padded DistributedSampler adds.
        _, first = np.unique(dim_zero_cat(self.index).cpu().numpy(), return_index=True)
        dist = dim_zero_cat(self.distances).cpu().numpy()[first]
        same = dim_zero_cat(self.issame).cpu().numpy()[first]
        mean, std, _ = verification_accuracy(dist, same, self.n_folds)
        return {"accuracy": torch.tensor(mean), "accuracy_std": torch.tensor(std)}
