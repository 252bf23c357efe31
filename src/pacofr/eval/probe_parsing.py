"""Parsing measures that can tell encoders apart, read from predicted region shares.

The study's first parsing score, an argmax over shrunken per-patch ridge predictions, sits near the position
prior for every encoder: brows, eyes and lips are a fraction of a percent of the pixels each and almost never
win the argmax. These measures read the same ridge predictions per **region group** (the 9 groups of
:data:`pacofr.data.format.REGION_GROUPS`) at the probe's sub-cells:

- ``r2``: 1 - SSE(predicted shares) / SSE(the per-position prior), per group over all test sub-cells: the
  share of what the position prior gets wrong that the features get right (0 = no better than the prior,
  1 = exact; negative = worse than the prior);
- ``dice``: soft Dice of the predicted shares (clipped to [0, 1]) against the true shares, over all sub-cells;
- ``f1_present``: per foreground group, F1 of a **calibrated** labelling over the pixels of the faces where
  the group is present (so an absent part is neither a free 0 nor a free 1). The labelling gives every
  sub-cell (4 x 4 px) the group with the largest predicted share plus one offset per group, the offsets
  chosen on the probe's training faces to maximise the same mean F1 (coordinate ascent over a fixed grid;
  background's offset stays 0). An offset per group is what a per-class threshold is for an argmax: it lets
  a small part win where the features say it is likely enough, instead of only where it beats skin. The
  labelling is scored against the true pixel shares of each sub-cell, so it is an exact pixel F1 of the
  block-wise labelling, and the offsets are chosen on the very labelling that is scored (a bilinear
  upsampling of the shares would blur a 1-sub-cell eye below the level its offset was chosen at).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pacofr.data.format import NUM_LABELS, REGION_NAMES, label_to_region_lut

NUM_GROUPS = len(REGION_NAMES)
FOREGROUND = tuple(range(1, NUM_GROUPS))  # every group but background
OFFSET_GRID = tuple(round(-1.0 + 0.05 * k, 2) for k in range(41))  # -1 ... 1 in share units (one bucketed pass)
CALIBRATION_ROUNDS = 2
CALIBRATION_FACES = 500  # training faces the offsets are chosen on (~500k sub-cells: stable pooled F1s)


def group_matrix() -> torch.Tensor:
    """(labels, groups) 0/1: class shares @ this = group shares."""
    lut = torch.tensor(label_to_region_lut())
    return F.one_hot(lut, NUM_GROUPS).float()


def to_groups(class_shares: torch.Tensor) -> torch.Tensor:
    """(..., labels) class shares -> (..., groups) group shares."""
    if class_shares.shape[-1] != NUM_LABELS:
        raise ValueError(f"expected {NUM_LABELS} class shares in the last dim, got {class_shares.shape}")
    return class_shares @ group_matrix().to(class_shares)


# --- continuous scores ------------------------------------------------------------------------------


def share_r2(pred: torch.Tensor, truth: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """(groups,) 1 - SSE(pred) / SSE(prior); all (faces, cells, groups) with ``prior`` (cells, groups)."""
    sse = ((pred.double() - truth.double()) ** 2).sum((0, 1))
    base = ((prior.double().unsqueeze(0) - truth.double()) ** 2).sum((0, 1))
    r2 = 1.0 - sse / base.clamp_min(1e-12)
    return torch.where(base > 1e-9, r2, torch.full_like(r2, float("nan")))  # nan: the prior is exact (no faces vary)


def soft_dice(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(groups,) 2 <p, t> / (|p| + |t|) with p the predicted shares clipped to [0, 1]; (faces, cells, groups)."""
    p, t = pred.double().clamp(0, 1), truth.double()
    dice = 2 * (p * t).sum((0, 1)) / (p.sum((0, 1)) + t.sum((0, 1))).clamp_min(1e-12)
    return torch.where(t.sum((0, 1)) > 0, dice, torch.full_like(dice, float("nan")))  # nan: the group never occurs


# --- the calibrated labelling ----------------------------------------------------------------------


@dataclass
class Tally:
    """Per group, pooled over the faces where the group is present: pixels labelled it, pixels that are it,
    pixels both (in sub-cells: every sub-cell has the same number of pixels). Pixels of faces without the
    group do not count: an absent part is neither a free 0 nor a free 1."""

    predicted: torch.Tensor  # (groups,) float64
    true: torch.Tensor
    both: torch.Tensor
    faces_present: torch.Tensor

    @classmethod
    def of(cls, labels: torch.Tensor, truth: torch.Tensor, present: torch.Tensor) -> Tally:
        """``labels``: (faces, cells) one group per sub-cell (all its pixels get it); ``truth``: (faces, cells,
        groups) the true pixel shares of every sub-cell; ``present``: (faces, groups) bool. Exact pixel counts
        of the sub-cell labelling, without drawing it at pixels."""
        counted = present.gather(1, labels).double()  # a sub-cell labelled g counts only where g is in the face
        hit = truth.gather(-1, labels.unsqueeze(-1)).squeeze(-1).double()  # its pixels that really are g

        def by_label(weights: torch.Tensor) -> torch.Tensor:
            return torch.bincount(labels.flatten(), weights.flatten(), minlength=NUM_GROUPS)

        return cls(by_label(counted), truth.double().sum((0, 1)), by_label(hit), present.sum(0).double())

    def f1(self) -> torch.Tensor:
        """(groups,) 2 TP / (predicted + true); nan for a group no face has."""
        f1 = 2 * self.both / (self.predicted + self.true).clamp_min(1e-12)
        return torch.where(self.faces_present > 0, f1, torch.full_like(f1, float("nan")))


def presence(truth: torch.Tensor) -> torch.Tensor:
    """(faces, groups) bool: the group has at least one pixel in the face; ``truth`` (faces, cells, groups)."""
    return truth.sum(1) > 0


def mean_foreground(values: torch.Tensor) -> float:
    """Mean over the foreground groups that have a value (nan groups skipped)."""
    fg = values[list(FOREGROUND)]
    fg = fg[~torch.isnan(fg)]
    return float(fg.mean()) if len(fg) else float("nan")


def _foreground_means(both: torch.Tensor, predicted: torch.Tensor, true: torch.Tensor, present: torch.Tensor):
    """(candidates,) mean foreground F1 of (candidates, groups) tallies (groups no face has are skipped)."""
    f1 = 2 * both / (predicted + true).clamp_min(1e-12)
    keep = [g for g in FOREGROUND if present[g] > 0]
    return f1[:, keep].mean(1)


def _offset_sweep(
    shares: torch.Tensor, truth: torch.Tensor, present: torch.Tensor, offsets: torch.Tensor, group: int
) -> torch.Tensor:
    """(len(OFFSET_GRID),) mean foreground F1 for every grid value of ``group``'s offset, the others fixed, in
    one pass: a sub-cell goes to ``group`` once the offset exceeds its margin to the best other group, so the
    tallies of all grid values are cumulative sums over the sub-cells bucketed by that margin."""
    others = shares + offsets
    others[..., group] = -torch.inf
    rival, rival_label = others.max(-1)
    grid = torch.tensor(OFFSET_GRID, dtype=shares.dtype)
    bucket = torch.searchsorted(grid, (rival - shares[..., group]).contiguous(), right=True).flatten()
    buckets = len(OFFSET_GRID) + 1  # bucket k: the sub-cell switches at every grid index >= k (k = len: never)

    def cumulative(weights: torch.Tensor, labels: torch.Tensor | int) -> torch.Tensor:
        """(grid values, groups): sums of ``weights`` over the sub-cells switched at each grid value, by label."""
        labels = torch.as_tensor(labels).expand_as(rival_label).flatten()
        table = torch.bincount(bucket * NUM_GROUPS + labels, weights.double().flatten(), minlength=buckets * NUM_GROUPS)
        return table.view(buckets, NUM_GROUPS).cumsum(0)[: len(OFFSET_GRID)]

    base = Tally.of(rival_label, truth, present)  # the group never chosen
    rival_counted = present.gather(1, rival_label)
    own_counted = present[:, group : group + 1].expand_as(rival_label)
    rival_hit = truth.gather(-1, rival_label.unsqueeze(-1)).squeeze(-1)
    predicted = base.predicted - cumulative(rival_counted, rival_label) + cumulative(own_counted, group)
    both = base.both - cumulative(rival_hit, rival_label) + cumulative(truth[..., group], group)
    return _foreground_means(both, predicted, base.true, base.faces_present)


def calibrate_offsets(shares: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(groups,) offsets added to predicted shares before the argmax, chosen by coordinate ascent on the mean
    foreground F1 (:class:`Tally`) of ``shares`` against ``truth`` (both (faces, cells, groups)).
    Deterministic: the grid and the order of the groups are fixed."""
    present = presence(truth)
    offsets = torch.zeros(NUM_GROUPS, dtype=shares.dtype)
    best = mean_foreground(Tally.of((shares + offsets).argmax(-1), truth, present).f1())
    for _ in range(CALIBRATION_ROUNDS):
        changed = False
        for group in FOREGROUND:
            scores = _offset_sweep(shares, truth, present, offsets, group)
            pick = int(scores.argmax())
            if float(scores[pick]) > best + 1e-9:
                best, offsets[group], changed = float(scores[pick]), OFFSET_GRID[pick], True
        if not changed:
            break
    return offsets


# --- all of it -------------------------------------------------------------------------------------


@dataclass
class GroupShares:
    """Predicted and true group shares of a set of faces at the probe's sub-cells."""

    pred: torch.Tensor  # (faces, cells, groups)
    truth: torch.Tensor  # (faces, cells, groups): the true pixel shares of every sub-cell

    def labels(self, offsets: torch.Tensor) -> torch.Tensor:
        """(faces, cells) the calibrated labelling: the group with the largest predicted share plus offset."""
        return (self.pred + offsets.to(self.pred)).argmax(-1)


def fit_offsets(train: GroupShares) -> torch.Tensor:
    """Offsets chosen on (at most :data:`CALIBRATION_FACES` of) the training faces' sub-cells."""
    n = min(CALIBRATION_FACES, train.pred.shape[0])
    return calibrate_offsets(train.pred[:n].float(), train.truth[:n].float())


def share_scores(test: GroupShares, prior: torch.Tensor, offsets: torch.Tensor) -> dict[str, Any]:
    """``{"r2", "dice", "f1_present"}`` means over groups (r2, dice: all 9; F1: the 8 foreground ones), and
    ``"groups"``: each per group (and the offsets)."""
    r2, dice = share_r2(test.pred, test.truth, prior), soft_dice(test.pred, test.truth)
    f1 = Tally.of(test.labels(offsets), test.truth, presence(test.truth)).f1()
    per_group = {
        "r2": dict(zip(REGION_NAMES, r2.tolist())),
        "dice": dict(zip(REGION_NAMES, dice.tolist())),
        "f1_present": {REGION_NAMES[g]: float(f1[g]) for g in FOREGROUND},
        "offsets": dict(zip(REGION_NAMES, offsets.tolist())),
    }
    return {"r2": _nanmean(r2), "dice": _nanmean(dice), "f1_present": mean_foreground(f1), "groups": per_group}


def _nanmean(values: torch.Tensor) -> float:
    kept = values[~torch.isnan(values)]
    return float(kept.mean()) if len(kept) else float("nan")
