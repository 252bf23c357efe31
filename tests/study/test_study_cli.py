"""``pacofr study`` end to end: cells written, finished cells skipped, one-line errors."""

from __future__ import annotations

import json

import pytest
from conftest import DEFAULT_STUDY

from pacofr.cli import main as pacofr_main
from pacofr.eval.feature_probe import MEASURES
from pacofr.study.spec import load_study

CELLS = len(load_study(DEFAULT_STUDY).cells())  # arms x seeds of the default study


def study(*args: str) -> int:
    return pacofr_main(["study", *args])


def test_random_init_cell_is_probed_and_then_skipped(tmp_path, study_faces, capsys):
    common = ["--config", str(DEFAULT_STUDY), "--root", str(tmp_path), "--data-root", str(study_faces)]
    assert study("cell", *common, "--index", "0") == 0
    result_path = tmp_path / "default" / "random_init" / "seed0" / "result.json"
    result = json.loads(result_path.read_text())
    assert result["pretrain"] is None and result["arm"] == "random_init"
    for task in ("parsing", "landmarks", "pose", "verification"):
        for cond in ("clean", "occluded"):
            assert result["scores"][task][cond] == pytest.approx(result["scores"][task][cond])  # finite, not nan
            assert task in result["chance"]
    stamp = result_path.stat().st_mtime_ns
    assert study("cell", *common, "--index", "0") == 0
    assert result_path.stat().st_mtime_ns == stamp  # done: skipped
    assert study("list", *common) == 0
    listing = capsys.readouterr().out
    assert "random_init/seed0" in listing and "done" in listing.splitlines()[0]
    assert study("list", *common, "--count") == 0
    assert capsys.readouterr().out.strip() == str(CELLS)


@pytest.mark.extended  # four more probes of the random-init encoder (~1 min on 2 cores); the probe is CI's already
def test_probe_check_reads_every_measure_with_two_seeds_and_budgets(tmp_path, study_faces, capsys):
    common = ["--config", str(DEFAULT_STUDY), "--root", str(tmp_path), "--data-root", str(study_faces)]
    assert study("cell", *common, "--index", "0") == 0
    result_path = tmp_path / "default" / "random_init" / "seed0" / "result.json"
    capsys.readouterr()
    # probe strength: the same encoder, two probe seeds x two budgets
    assert study("probe-check", *common, "--arm", "random_init", "--seed", "0", "--budgets", "20", "40") == 0
    check = json.loads((result_path.parent / "probe_check.json").read_text())
    assert [(r["probe_seed"], r["train_faces"]) for r in check["runs"]] == [(0, 20), (1, 20), (0, 40), (1, 40)]
    measures = set(MEASURES)  # parsing's 4 scores, landmarks, pose, verification's 2
    assert set(check["spread"]) == measures | {f"{m}@subsets" for m in measures}  # every measure of both views
    assert set(check["seed_spread"]) == set(check["budget_change"]) == set(check["spread"])
    assert "spread (max - min)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cell", "--index", "99"], f"outside 0..{CELLS - 1}"),
        (["cell"], "needs --index"),
        (["aggregate"], "no finished cell"),
        (["cell", "--index", "0", "--data-root", "/nonexistent"], "no dataset at /nonexistent"),
    ],
)
def test_user_errors_are_one_line(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    assert study(*args[:1], "--config", str(DEFAULT_STUDY), "--root", str(tmp_path), *args[1:]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_quick_study_runs_end_to_end(tmp_path, study_faces, capsys):
    """`make study-quick`: 2 arms x 1 seed, pretraining through `pacofr fit`, probes, table, plots, HPARAMS."""
    common = ["--config", str(DEFAULT_STUDY), "--quick", "--root", str(tmp_path), "--data-root", str(study_faces)]
    assert study("run", *common) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "default_quick"
    for arm in ("mae", "pacofr"):
        result = json.loads((folder / arm / "seed0" / "result.json").read_text())
        assert result["pretrain"]["steps"] == 6
        assert "probe/pose_mae" in result["curves"]
        config = (folder / arm / "seed0" / "run" / "config.yaml").read_text()
        assert ("RandomMasker" in config) == (arm == "mae")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["cells"] == 2 and summary["missing_cells"] == []
    assert "| chance (no features) |" in out and "`pacofr`" in out
    assert all((folder / "img" / f"study_default_quick_{k}.png").is_file() for k in ("scores", "online_probe"))
    assert any((folder / "tb" / "pacofr_seed0").iterdir())


def test_preemption_signal_reaches_the_pretraining_child(tmp_path):
    """SLURM's USR1 to the cell process goes on to `pacofr fit`, whose exit code (75: requeued) comes back."""
    import os
    import signal
    import sys
    import threading

    from pacofr.study.runner import run_forwarding_signals

    ready = tmp_path / "ready"
    child = (
        "import signal, sys, time, pathlib\n"
        "signal.signal(signal.SIGUSR1, lambda *a: sys.exit(75))\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(60)\n"
        "sys.exit(1)\n"
    )

    def send_when_ready() -> None:
        for _ in range(600):
            if ready.exists():
                os.kill(os.getpid(), signal.SIGUSR1)
                return
            threading.Event().wait(0.05)

    before = signal.getsignal(signal.SIGUSR1)
    threading.Thread(target=send_when_ready, daemon=True).start()
    with open(tmp_path / "log", "w") as log:
        assert run_forwarding_signals([sys.executable, "-c", child], log) == 75
    assert signal.getsignal(signal.SIGUSR1) is before  # our handler is gone again
