"""Paired statistics of the study: a t-interval and seed-by-seed differences against a reference arm.

Kept apart from :mod:`pacofr.study.report` so that the bench scripts reading a summary (``bench/study_verdict.py``)
need only numpy and scipy, not the probe and its torch stack."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of a t-interval; nan bounds with fewer than two values."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def paired(values: dict[int, float], reference: dict[int, float], higher: bool) -> dict[str, Any] | None:
    """Differences seed by seed against a reference arm, their mean and 95 % t-interval, and a verdict."""
    seeds = sorted(s for s in values if s in reference)
    if not seeds:
        return None
    diffs = [values[s] - reference[s] for s in seeds]
    mean, low, high = t_interval(diffs)
    better = mean > 0 if higher else mean < 0
    separated = not math.isnan(low) and (low > 0 or high < 0)
    verdict = ("better" if better else "worse") if separated else "within noise"
    return {
        "seeds": seeds,
        "diffs": diffs,
        "mean": mean,
        "ci95": [low, high],
        "verdict": verdict if len(seeds) > 1 else f"n/a ({len(seeds)} seed)",
    }
