"""bench/study_verdict.py: the verdict tables of docs/study.md from a summary.json, differences paired by seed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def row(arm: str, seeds: list[int], values: list[float], vs: dict | None = None) -> dict:
    return {"arm": arm, "seeds": seeds, "values": values, "mean": sum(values) / len(values), "vs": vs or {}}


def test_paired_differences_and_intervals(tmp_path):
    # mae_parse is a reference arm (the summary holds pacofr's comparison); mae_spatial is not (paired here)
    vs = {"mae_parse": {"seeds": [0, 1, 2], "mean": -0.01, "ci95": [-0.02, 0.0]}}
    rows = [
        row("mae", [0, 1, 2], [0.17, 0.18, 0.16]),
        row("mae_parse", [0, 1, 2], [0.15, 0.15, 0.14]),
        row("mae_spatial", [0, 1], [0.14, 0.15]),
        row("pacofr", [0, 1, 2], [0.14, 0.14, 0.13], vs),
    ]
    summary = {"tasks": {"landmarks/clean": {"rows": rows}}}
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "study_verdict.py"), str(path), "--arms", "mae,pacofr"]
        + ["--pairs", "pacofr:mae_parse,pacofr:mae_spatial,mae:pacofr"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    line = next(line for line in out.splitlines() if line.startswith("| landmark NME"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1:3] == ["0.1700 (3)", "0.1367 (3)"]
    assert cells[3] == "-0.0100 [-0.0200, +0.0000] (3 seeds)"  # the summary's own interval
    # pacofr - mae_spatial on the seeds both have (0, 1): diffs 0.0 and -0.01 -> mean -0.005, t(1) = 12.706
    assert cells[4] == "-0.0050 [-0.0685, +0.0585] (2 seeds)"
    # mae - pacofr, three seeds: diffs 0.03, 0.04, 0.03 -> mean 0.0333, sd 0.00577, t(2) = 4.303
    assert cells[5] == "+0.0333 [+0.0190, +0.0477] (3 seeds)"
    assert "25 %-visible subsets" in out  # the second view's header (its task is absent: no rows)
    only = subprocess.run(
        [sys.executable, str(REPO / "bench" / "study_verdict.py"), str(path), "--arms", "mae", "--views", "full"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "| landmark NME" in only and "25 %-visible subsets" not in only


def test_earlier_summary_fills_lost_cells_and_repairs(tmp_path):
    # the new aggregate holds seed 2 only; seeds 0 and 1 survive in an earlier summary (their result.json lost)
    stale = {"mae": {"seeds": [2], "mean": 0.5, "ci95": [None, None]}}  # covers seed 2 alone: must be recomputed
    new = {"tasks": {"landmarks/clean": {"rows": [row("mae", [2], [0.16]), row("pacofr", [2], [0.13], stale)]}}}
    old = {
        "tasks": {
            "landmarks/clean": {
                "rows": [row("mae", [0, 1, 2], [0.17, 0.18, 0.99]), row("pacofr", [0, 1], [0.14, 0.14])]
            }
        }
    }
    (tmp_path / "new.json").write_text(json.dumps(new))
    (tmp_path / "old.json").write_text(json.dumps(old))
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "study_verdict.py"), str(tmp_path / "new.json"), "--arms", "mae,pacofr"]
        + ["--pairs", "mae:pacofr", "--earlier", str(tmp_path / "old.json")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    line = next(line for line in out.splitlines() if line.startswith("| landmark NME"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1:3] == ["0.1700 (3)", "0.1367 (3)"]  # the new seed-2 value wins over the earlier 0.99
    assert cells[3] == "+0.0333 [+0.0190, +0.0477] (3 seeds)"  # paired over the merged seeds, not the stale vs
    assert "`mae` seed 0, `mae` seed 1, `pacofr` seed 0, `pacofr` seed 1." in out


def test_unreadable_summary_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    for args in ([str(tmp_path / "missing.json")], [str(tmp_path / "broken.json")]):
        proc = subprocess.run(
            [sys.executable, str(REPO / "bench" / "study_verdict.py"), *args], capture_output=True, text=True
        )
        assert proc.returncode == 2 and "study_verdict: cannot read" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
