"""The table from the cells' JSONs: means, paired differences with intervals, plots, HPARAMS."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import DEFAULT_STUDY

from pacofr.eval.feature_probe import MEASURES, TASKS
from pacofr.run_folder import atomic_write_text
from pacofr.study.report import aggregate, collect, markdown_tables, summarise
from pacofr.study.spec import load_study

GROUPS = {"r2": {"eyes": 0.1, "skin": 0.5}, "f1_present": {"eyes": 0.2, "skin": 0.9}}


def fake_scores(seed: int, shift: float, measures=MEASURES) -> dict:
    scores = {m: {"clean": 0.5 + shift + 0.01 * seed, "occluded": 0.4 + shift} for m in measures}
    scores["parsing_groups"] = {"clean": GROUPS, "occluded": GROUPS}
    return scores


def fake_result(spec, cell, shift: float, measures=MEASURES) -> dict:
    scores = fake_scores(cell.seed, shift, measures)
    scores["views"] = {"subsets": fake_scores(cell.seed, shift / 2, measures)}
    chance = {m: {"clean": 0.3, "occluded": 0.3} for m in measures}
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


def test_paired_differences_and_verdicts(tmp_path):
    spec = three_seed_spec(tmp_path)
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
    # the new measures and the subset view: columns of their own, paired the same way
    r2 = {r["arm"]: r for r in summary["tasks"]["parsing_r2@subsets/clean"]["rows"]}
    assert r2["pacofr"]["vs_reference"]["diffs"] == pytest.approx([0.05, 0.055, 0.06])
    columns = {f"{m}{v}/{c}" for m in MEASURES for v in ("", "@subsets") for c in ("clean", "occluded")}
    assert set(summary["tasks"]) == columns
    assert summary["parsing_groups"]["full"]["f1_present"]["mae"] == pytest.approx({"eyes": 0.2, "skin": 0.9})


def test_a_second_reference_arm_gets_its_own_intervals(tmp_path):
    spec = three_seed_spec(tmp_path)
    spec = dataclasses.replace(spec, reference_arms=("mae", "crfrp_mae"))
    summary = summarise(spec, collect(spec)[0])
    rows = {r["arm"]: r for r in summary["tasks"]["verification_learned/clean"]["rows"]}
    assert set(rows["pacofr"]["vs"]) == {"mae", "crfrp_mae"}
    assert rows["pacofr"]["vs"]["crfrp_mae"]["mean"] == pytest.approx(0.11 - 0.00055, abs=1e-4)
    assert set(rows["crfrp_mae"]["vs"]) == {"mae"} and set(rows["mae"]["vs"]) == {"crfrp_mae"}
    assert rows["pacofr"]["vs_reference"] == rows["pacofr"]["vs"]["mae"]  # the first stays the main one
    table = markdown_tables(summary)
    assert "Δ vs mae, 95 % CI | Δ vs crfrp_mae, 95 % CI" in table
    assert summary["reference_arms"] == ["mae", "crfrp_mae"]


def test_results_without_the_new_measures_still_make_a_table(tmp_path):
    """A result written before the new measures (no views, four tasks): its columns only."""
    spec = load_study(DEFAULT_STUDY, root=tmp_path)
    for cell in spec.cells()[:4]:
        result = fake_result(spec, cell, 0.0, measures=TASKS)
        result["scores"].pop("views")
        atomic_write_text(cell.result_path, json.dumps(result))
    summary = summarise(spec, collect(spec)[0])
    assert sorted(summary["tasks"]) == sorted(f"{t}/{c}" for t in TASKS for c in ("clean", "occluded"))
    assert "Landmarks" in markdown_tables(summary)


def test_aggregate_writes_table_plots_and_hparams(tmp_path):
    spec = three_seed_spec(tmp_path)
    summary = aggregate(spec)
    table = (spec.folder / "table.md").read_text()
    assert "chance (no features)" in table and "`pacofr`" in table and "Missing cells" in table
    for task in ("Parsing", "Landmarks", "Head pose", "Verification", "R²", "LDA", "subsets view"):
        assert task in table
    assert "Parsing per region group" in table
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
