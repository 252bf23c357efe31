"""Metric functions against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pacofr.eval.metrics import (
    NME,
    ParsingF1,
    PoseMAE,
    VerificationAccuracy,
    box_diagonal,
    box_size,
    inter_ocular,
    nme_per_sample,
    verification_accuracy,
)


def test_nme_inter_ocular_hand_computed():
    target = torch.zeros(2, 68, 2)
    target[:, 36] = torch.tensor([10.0, 20.0])  # outer eye corners 50 px apart
    target[:, 45] = torch.tensor([60.0, 20.0])
    pred = target.clone()
    pred[0] += torch.tensor([3.0, 4.0])  # every point of sample 0 is 5 px off -> 5 / 50 = 0.1
    norm = inter_ocular(target, 36, 45)
    assert norm.tolist() == [50.0, 50.0]
    assert nme_per_sample(pred, target, norm).tolist() == pytest.approx([0.1, 0.0])
    metric = NME(threshold=0.08)
    metric.update(pred[:1], target[:1], norm[:1])
    metric.update(pred[1:], target[1:], norm[1:])
    out = metric.compute()
    assert out["nme"].item() == pytest.approx(0.05)
    assert out["fr@0.08"].item() == pytest.approx(0.5)  # one of two samples above 0.08
    # CED: 1/2 of samples at 0 until x = 0.08 (sample 0 never counted): AUC = 0.5 (up to the grid).
    assert out["auc@0.08"].item() == pytest.approx(0.5, abs=1e-3)


def test_box_normalisers():
    boxes = torch.tensor([[10.0, 20.0, 40.0, 60.0]])  # w=30, h=40
    assert box_size(boxes).item() == pytest.approx(math.sqrt(1200))
    assert box_diagonal(boxes).item() == pytest.approx(50.0)


def test_parsing_f1_hand_computed():
    target = torch.tensor([[0, 0, 1, 1, 2, 2]])
    pred = torch.tensor([[0, 1, 1, 1, 2, 0]])
    metric = ParsingF1(["background", "skin", "hair"])
    metric.update(pred, target)
    out = metric.summary()
    # background tp=1 fp=1 fn=1 -> 0.5; skin tp=2 fp=1 fn=0 -> 0.8; hair tp=1 fp=0 fn=1 -> 2/3
    assert out["f1/background"] == pytest.approx(0.5)
    assert out["f1/skin"] == pytest.approx(0.8)
    assert out["f1/hair"] == pytest.approx(2 / 3)
    assert out["f1_mean"] == pytest.approx((0.8 + 2 / 3) / 2)  # background excluded


def test_parsing_f1_accumulates_over_batches_not_per_image():
    metric = ParsingF1(["bg", "a"])
    metric.update(torch.tensor([[1, 1]]), torch.tensor([[1, 1]]))  # a: tp 2
    metric.update(torch.tensor([[0, 0]]), torch.tensor([[1, 0]]))  # a: fn 1
    # dataset-level: a F1 = 2*2 / (2*2 + 0 + 1) = 0.8 (per-image averaging would give 0.5)
    assert metric.summary()["f1/a"] == pytest.approx(0.8)


def test_pose_mae_hand_computed():
    metric = PoseMAE()
    metric.update(torch.tensor([[10.0, 0.0, 0.0]]), torch.zeros(1, 3))
    metric.update(torch.tensor([[0.0, 5.0, -5.0]]), torch.zeros(1, 3))
    out = metric.compute()
    assert out["mae/yaw"].item() == pytest.approx(5.0)
    assert out["mae/pitch"].item() == pytest.approx(2.5)
    assert out["mae/roll"].item() == pytest.approx(2.5)
    assert out["mae"].item() == pytest.approx(10 / 3)


def _separable_pairs() -> tuple[np.ndarray, np.ndarray]:
    issame = np.array([True, False] * 10)
    dist = np.where(issame, 0.5, 1.5)
    return dist, issame


def test_verification_10fold_hand_computed():
    dist, issame = _separable_pairs()
    mean, std, accs = verification_accuracy(dist, issame)
    assert mean == 1.0 and std == 0.0
    # One "same" pair far apart in fold 0 (pairs 0-1): that fold scores 1/2, the 9 others stay perfect,
    # because the threshold chosen on the other folds is still between 0.5 and 1.5.
    dist[0] = 2.0
    mean, std, accs = verification_accuracy(dist, issame)
    assert accs.tolist() == [0.5] + [1.0] * 9
    assert mean == pytest.approx(0.95)


def test_verification_threshold_comes_from_the_other_folds():
    # Same pairs at 1.0, different at 1.2 except fold 0 whose different pair sits at 0.9:
    # folds 1-9 pick a threshold in (1.0, 1.2], which misclassifies fold 0's different pair
    # and gets its same pair right; fold 0's own optimum is never used for fold 0.
    issame = np.array([True, False] * 10)
    dist = np.where(issame, 1.0, 1.2)
    dist[1] = 0.9
    mean, _, accs = verification_accuracy(dist, issame)
    assert accs[0] == 0.5
    assert mean == pytest.approx(0.95)


def test_verification_metric_orders_by_index_and_drops_duplicates():
    emb = torch.eye(4)
    metric = VerificationAccuracy(n_folds=2)
    # pairs: 0 same (identical vectors), 1 different (orthogonal: distance 2), given out of order + a duplicate
    metric.update(emb[[1, 0]], emb[[2, 0]], torch.tensor([False, True]), torch.tensor([1, 0]))
    metric.update(emb[[3, 1]], emb[[3, 2]], torch.tensor([True, False]), torch.tensor([2, 1]))
    metric.update(emb[[2]], emb[[0]], torch.tensor([False]), torch.tensor([3]))
    assert metric.compute()["accuracy"].item() == pytest.approx(1.0)


def test_verification_rejects_too_few_pairs():
    with pytest.raises(ValueError, match="at least 10 pairs"):
        verification_accuracy(np.zeros(5), np.ones(5, bool))
