"""Closed-form ridge with a held-out strength: exact algebra, sensible choices."""

from __future__ import annotations

import pytest
import torch

from pacofr.eval.ridge import _Decomposition, _holdout_errors, _standardise, fit_ridge


@pytest.mark.parametrize(("n", "d"), [(400, 20), (60, 300)])  # primal and dual regimes
def test_recovers_a_linear_map(n, d):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g) * 3 + 1
    w = torch.randn(d, 3, generator=g)
    y = x @ w + 5
    fit = fit_ridge(x, {"y": y}, torch.Generator().manual_seed(1))["y"]
    test = torch.randn(50, d, generator=g) * 3 + 1
    err = (fit.predict(test) - (test @ w + 5)).abs().mean() / (test @ w).abs().mean()
    # primal: exact up to the smallest strength; dual (d > n): the minimum-norm solution only sees a subspace
    assert err < (1e-3 if d < n else 0.9)


def test_noise_pushes_the_strength_up():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 150, generator=g)
    clean = x[:, :1] * 2
    noisy = clean + 3 * torch.randn(200, 1, generator=g)
    fits = fit_ridge(x, {"clean": clean, "noisy": noisy}, torch.Generator().manual_seed(0))
    assert fits["noisy"].strength > fits["clean"].strength


@pytest.mark.parametrize(("n", "d"), [(80, 10), (30, 70)])
def test_holdout_errors_equal_explicit_predictions(n, d):
    g = torch.Generator().manual_seed(3)
    xs, _, _ = _standardise(torch.randn(n, d, generator=g))
    part = _Decomposition(xs)
    x_hold = torch.randn(20, d, generator=g).double()
    y_fit, y_hold = torch.randn(n, 2, generator=g).double(), torch.randn(20, 2, generator=g).double()
    strengths = (1e-3, 1e-1, 10.0)
    fast = _holdout_errors(part, x_hold, y_fit, y_hold, strengths)
    slow = [((x_hold @ part.weights(y_fit, s) - y_hold) ** 2).mean().item() for s in strengths]
    assert fast == pytest.approx(slow, rel=1e-8)


def test_groups_stay_on_one_side_of_the_split(monkeypatch):
    seen = {}
    real = _holdout_errors

    def spy(part, x_hold, y_fit, y_hold, strengths):
        seen["hold"] = y_hold.shape[0]
        return real(part, x_hold, y_fit, y_hold, strengths)

    monkeypatch.setattr("pacofr.eval.ridge._holdout_errors", spy)
    x = torch.randn(50, 4)
    fit_ridge(x, {"y": torch.randn(50, 1)}, torch.Generator().manual_seed(0), groups=torch.arange(50) // 5)
    assert seen["hold"] % 5 == 0 and seen["hold"] == 10  # 2 of the 10 groups, whole
