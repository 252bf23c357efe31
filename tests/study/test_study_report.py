"""The table from the cells' JSONs: means, paired differences with intervals, plots, HPARAMS."""

from __future__ import annotations

import json
import math

import pytest
from conftest import DEFAULT_STUDY

from pacofr.eval.feature_probe import TASKS
from pacofr.run_folder import atomic_write_text
from pacofr.study.report import aggregate, summarise, t_interval
from pacofr.study.spec import load_study


def fake_result(spec, cell, shift: float) -> dict:
    scores = {t: {"clean": 0.5 + shift + 0.01 * cell.seed, "occluded": 0.4 + shift} for t in TASKS}
    chance = {t: {"clean": 0.3, "occluded": 0.3} for t in TASKS}
    curves = {
        "probe/pose_mae": [[50, 9.0 - shift], [100, 8.0 - shift]],
        "probe/knn_identity_acc": [[50, 0.1], [100, 0.2]],
    }
    return {
        "study": spec.name, "arm": cell.arm.name, "label": cell.arm.label, "seed": cell.seed,
        "cell_key": spec.cell_key(cell), "pretrain": {"seconds": 10.0, "steps": 6},
        "overrides": spec.fit_overrides(cell),
        "scores": scores, "chance": chance, "curves": curves, "seconds": {"probe": 1.0, "cell": 11.0},
        "machine": {"cores": 2},
    }  # fmt: skip


def three_seed_spec(tmp_path):
    spec = load_study(DEFAULT_STUDY, root=tmp_path)
    shifts = {"mae": 0.0, "pacofr": 0.1, "crfrp_mae": 0.0005}
    for cell in spec.cells():
        if cell.arm.name in shifts:
            result = fake_result(spec, cell, shifts[cell.arm.name] * (1 + 0.1 * cell.seed))
            atomic_write_text(cell.result_path, json.dumps(result))
    return spec


def test_t_interval():
    mean, low, high = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and low == pytest.approx(2 - 4.302653 / math.sqrt(3), rel=1e-5) and high > 3
    assert math.isnan(t_interval([1.0])[1])


def test_paired_differences_and_verdicts(tmp_path):
    spec = three_seed_spec(tmp_path)
    from pacofr.study.report import collect

    results, missing = collect(spec)
    assert len(results) == 9 and len(missing) == len(spec.cells()) - 9
    summary = summarise(spec, results)
    rows = {r["arm"]: r for r in summary["tasks"]["parsing/clean"]["rows"]}
    assert rows["pacofr"]["vs_reference"]["diffs"] == pytest.approx([0.1, 0.11, 0.12])
    assert rows["pacofr"]["vs_reference"]["verdict"] == "better"  # higher F1 is better
    assert {r["arm"]: r for r in summary["tasks"]["pose/clean"]["rows"]}["pacofr"]["vs_reference"]["verdict"] == "worse"
    assert rows["crfrp_mae"]["vs_reference"]["verdict"] in ("better", "within noise")
    assert "vs_reference" not in rows["mae"]
    assert summary["tasks"]["parsing/clean"]["chance"] == pytest.approx(0.3)


def test_aggregate_writes_table_plots_and_hparams(tmp_path):
    spec = three_seed_spec(tmp_path)
    summary = aggregate(spec)
    table = (spec.folder / "table.md").read_text()
    assert "chance (no features)" in table and "`pacofr`" in table and "Missing cells" in table
    for task in ("Parsing", "Landmarks", "Head pose", "Verification"):
        assert task in table
    assert json.loads((spec.folder / "summary.json").read_text())["cells"] == 9
    for plot in summary["plots"]:
        assert open(plot, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert len(summary["plots"]) == 2
    runs = sorted(p.name for p in (spec.folder / "tb").iterdir() if p.is_dir())
    assert runs == sorted(f"{a}_seed{s}" for a in ("mae", "pacofr", "crfrp_mae") for s in spec.seeds)


def test_aggregate_without_results_is_a_clear_error(tmp_path):
    spec = load_study(DEFAULT_STUDY, root=tmp_path)
    with pytest.raises(FileNotFoundError, match="no finished cell"):
        aggregate(spec)
