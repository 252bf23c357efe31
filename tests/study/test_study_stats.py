"""pacofr.study.stats: the t-interval and the seed-by-seed paired difference, without the probe's torch stack."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from pacofr.study.stats import paired, t_interval

REPO = Path(__file__).resolve().parents[2]


def test_t_interval():
    mean, low, high = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and low == pytest.approx(2 - 4.302653 / math.sqrt(3), rel=1e-5) and high > 3
    assert math.isnan(t_interval([1.0])[1])


def test_paired_uses_only_the_shared_seeds_and_says_when_it_cannot_tell():
    # seeds 0 and 2 are shared; diffs -0.02 and -0.03 -> mean -0.025, t(1) = 12.706 * sd 0.00707 / sqrt(2)
    out = paired({0: 0.15, 1: 0.10, 2: 0.14}, {0: 0.17, 2: 0.17, 3: 0.2}, higher=False)
    assert out["seeds"] == [0, 2] and out["mean"] == pytest.approx(-0.025)
    assert out["ci95"][0] == pytest.approx(-0.025 - 0.0635, abs=1e-3) and out["verdict"] == "within noise"
    sure = paired({0: 0.15, 1: 0.15, 2: 0.14}, {0: 0.17, 1: 0.18, 2: 0.16}, higher=False)
    assert sure["verdict"] == "better" and sure["ci95"][1] < 0
    assert paired({0: 0.1}, {0: 0.2}, higher=True)["verdict"] == "n/a (1 seed)"
    assert paired({0: 0.1}, {1: 0.2}, higher=True) is None


def test_the_verdict_script_reads_a_summary_without_importing_torch():
    # the bench scripts that turn a summary into tables run in a second, not the ~6 s of the probe's imports
    code = (
        "import runpy, sys; sys.argv = ['study_verdict.py', '--help']\n"
        f"try:\n    runpy.run_path({str(REPO / 'bench' / 'study_verdict.py')!r}, run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
