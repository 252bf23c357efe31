"""bench/study_verdict_doc.py: docs/study.md's verdict is written from the committed summaries, token by token."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "study_verdict_doc.py"


def load():
    spec = importlib.util.spec_from_file_location("study_verdict_doc", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(arm: str, seeds: list[int], values: list[float]) -> dict:
    return {"arm": arm, "seeds": seeds, "values": values, "mean": sum(values) / len(values), "vs": {}}


def summary(missing: list[str] = ()) -> dict:
    landmarks = [row("mae", [0, 1, 2], [0.17, 0.18, 0.16]), row("pacofr", [0, 1, 2], [0.14, 0.14, 0.13])]
    pose = [row("mae", [0, 1, 2], [6.0, 6.2, 5.9]), row("pacofr", [0], [5.5])]
    return {
        "tasks": {"landmarks/clean": {"rows": landmarks}, "pose/clean": {"rows": pose}},
        "missing_cells": list(missing),
    }


def test_committed_docs_match_the_committed_summaries():
    # the verdict's numbers are the data's: regenerating the section from the repository changes nothing
    out = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_tokens_fill_paired_differences_means_and_counts():
    doc = load()
    study = doc.Study(summary(["pacofr/seed1", "pacofr/seed2"]))
    text = doc.render(
        "{{D landmarks pacofr mae}} | {{Dm landmarks pacofr mae}} | {{M landmarks mae}} | {{N pacofr}} | "
        "{{N2 pacofr mae}} | {{D pose pacofr mae}} | {{TODO}}",
        study,
        None,
    )
    parts = [p.strip() for p in text.split("|")]
    # diffs -0.03, -0.04, -0.03: mean -0.0333, sd 0.00577, t(2) = 4.303 -> +-0.0143
    assert parts[0] == "−0.0333 [−0.0477, −0.0190]"
    assert parts[1] == "−0.0333"
    assert parts[2] == "0.1700"
    assert parts[3:5] == ["3", "3"]
    assert parts[5] == "−0.50°"  # one seed in common: the difference, no interval, the unit after it
    assert parts[6].startswith("`pacofr` seeds 1, 2 of the default grid (2 cells); the 12 cells of the 3× grid")


def test_a_3x_token_reads_the_3x_summary_and_fails_clearly_without_one():
    doc = load()
    default, compute3x = doc.Study(summary()), doc.Study(summary())
    compute3x.summary["tasks"]["landmarks/clean"]["rows"][1] = row("pacofr", [0, 1, 2], [0.10, 0.11, 0.10])
    assert doc.render("{{M@3x landmarks pacofr}}", default, compute3x) == "0.1033"
    with pytest.raises(KeyError, match="no 3x summary"):
        doc.render("{{M@3x landmarks pacofr}}", default, None)


@pytest.mark.parametrize("token", ["{{D landmarks pacofr fsfm}}", "{{Q pose mae}}", "{{D parsing_r2 pacofr mae}}"])
def test_unknown_arms_tokens_and_tasks_raise(token):
    doc = load()
    with pytest.raises(KeyError):
        doc.render(token, doc.Study(summary()), None)


def test_gaps_and_gains_pair_800_and_2400_steps_by_seed():
    doc = load()
    default = doc.Study(summary())
    late = summary()
    late["tasks"]["landmarks/clean"]["rows"] = [row("mae", [0, 1], [0.15, 0.16]), row("pacofr", [0, 1], [0.13, 0.13])]
    compute3x = doc.Study(late)
    gaps = doc.render("{{GAPS}}", default, compute3x)
    line = next(x for x in gaps.splitlines() if x.startswith("| `pacofr` − `mae_spatial` | landmark NME"))
    assert line.endswith("| – | – | – |")  # mae_spatial has no cells in either summary
    line = next(x for x in gaps.splitlines() if x.startswith("| `mae_spatial` − `mae`"))
    assert line.count("| – |") >= 1
    # the change of a gap, paired by seed: pacofr - mae at 800 steps -0.03, -0.04 (seeds 0, 1), at 2,400 -0.02,
    # -0.03 -> the gap closes by +0.01 on both seeds
    change = doc.gap_change(default, compute3x, "landmarks", "pacofr", "mae")
    assert change.startswith("+0.0100") and change.endswith("(2)")
    gains = doc.render("{{GAINS}}", default, compute3x)
    line = next(x for x in gains.splitlines() if x.startswith("| landmark NME"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    # mae: 0.15 - 0.17, 0.16 - 0.18 -> -0.02 on both seeds (sd 0: a zero-width interval); pacofr: -0.01, -0.01
    assert cells[1].startswith("−0.0200") and cells[1].endswith("(2)")
    assert cells[4].startswith("−0.0100") and cells[4].endswith("(2)")
    assert cells[2] == "–"  # mae_parse: in neither
    # a gap with its interval and seed count, as the GAPS table prints it
    assert doc._with_seeds(default, "landmarks", "pacofr", "mae") == "−0.0333 [−0.0477, −0.0190] (3)"
    assert doc._with_seeds(compute3x, "landmarks", "pacofr", "mae") == "−0.0250 [−0.0885, +0.0385] (2)"
    assert doc._with_seeds(default, "landmarks", "pacofr", "fsfm") == "–"
    for block in ("{{GAPS}}", "{{GAINS}}", "{{DONE3X}}"):  # the 3x-only blocks name what is missing
        with pytest.raises(KeyError, match="no 3x summary"):
            doc.render(block, default, None)


def test_every_arm_is_paired_with_each_reference_arm_over_its_seeds():
    doc = load()
    study = doc.Study({**summary(), "reference_arms": ["mae", "mae_parse"]})
    study.summary["tasks"]["landmarks/clean"]["rows"].append(row("mae_parse", [0, 1], [0.15, 0.15]))
    lines = doc.render("{{REFS landmarks}}", study, None).splitlines()
    assert lines[0] == "| arm | mean ± sd (seeds) | arm − `mae` (seeds) | arm − `mae_parse` (seeds) |"
    cells = {line.split(" | ")[0].strip("| "): [c.strip() for c in line.strip("|").split("|")] for line in lines[2:]}
    # mae - mae_parse on seeds 0, 1: +0.02, +0.03 -> +0.025, t(1) = 12.706 * 0.00707 / sqrt(2) = 0.0635
    assert cells["`mae`"][1:] == ["0.1700 ± 0.0100 (3)", "reference", "+0.0250 [−0.0385, +0.0885] (2)"]
    # pacofr - mae: -0.03, -0.04, -0.03 over seeds 0-2; pacofr - mae_parse on seeds 0, 1: -0.01, -0.01
    assert cells["`pacofr`"][2] == "−0.0333 [−0.0477, −0.0190] (3)"
    assert cells["`pacofr`"][3] == "−0.0100 [−0.0100, −0.0100] (2)"
    assert cells["`mae_parse`"][1:] == ["0.1500 ± 0.0000 (2)", "−0.0250 [−0.0885, +0.0385] (2)", "reference"]
    with pytest.raises(KeyError, match="reference_arms"):  # the reference arms come from the summary
        doc.render("{{REFS landmarks}}", doc.Study(summary()), None)
