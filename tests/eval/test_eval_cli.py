"""``pacofr eval`` and ``pacofr export`` through the real entry point: a public-format task from its
config file, the synthetic suite end to end (one table, the JSONs), export -> timm -> same features and
same scores, and slurm/eval.sbatch run as a plain script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from config_files import config_args, eval_files
from eval_layouts import write_300w, write_pretraining_checkpoint, write_synth

from pacofr.cli import main as pacofr
from pacofr.eval.cli import SUITES, EvalCLI, make_cli

REPO = Path(__file__).resolve().parents[2]
QUICK = ["--trainer.max_epochs", "1", "--trainer.precision", "32-true", "--data.num_workers", "0"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A pretraining run folder holding a tiny checkpoint (ViT-Ti at 32 px)."""
    folder = tmp_path_factory.mktemp("run") / "checkpoints"
    folder.mkdir()
    write_pretraining_checkpoint(folder / "last.ckpt", img_size=32)
    return folder


def test_public_task_from_its_config(tmp_path, run_dir, capsys):
    root = tmp_path / "300W"
    write_300w(root)
    ckpt = run_dir / "last.ckpt"
    args = ["eval", *config_args(eval_files("300w")), "--model.encoder_ckpt", str(ckpt)]
    args += ["--data.root", str(root), "--model.img_size", "32", "--model.head_dim", "16", *QUICK]
    args += ["--trainer.enable_progress_bar", "false"]
    assert pacofr(args) == 0
    out = capsys.readouterr().out
    table = out[out.index("300w (finetune)") :]
    for split in ("common", "challenging", "full"):
        assert f"\n{split} " in table, table
    results = json.loads((run_dir / "results" / "300w.json").read_text())
    assert results["mode"] == "finetune" and results["epochs"] == 1
    assert set(results["metrics"]) == {"common", "challenging", "full"}
    assert results["config"]["data"]["img_size"] == 32  # linked to model.img_size
    assert results["config"]["data"]["root"] == str(root)
    assert list((run_dir / "results" / "tb" / "300w").rglob("events.out.tfevents.*"))


def test_synth_suite_end_to_end(tmp_path, run_dir, capsys):
    root = tmp_path / "synth"
    write_synth(root, list(range(6)) * 2)
    ckpt = run_dir / "last.ckpt"
    results_dir = tmp_path / "scores"
    args = ["eval", "--suite", "synth", "--model.encoder_ckpt", str(ckpt), "--data.root", str(root)]
    args += ["--model.results_dir", str(results_dir), "--model.head_dim", "16", *QUICK]
    assert pacofr(args) == 0
    out = capsys.readouterr().out
    # exactly one table: the suite's (Lightning's own per-task tables went to the logs)
    assert out.count("task ") == 1 and "Test metric" not in out, out
    for task in SUITES["synth"].tasks:
        assert any(line.startswith(task + " ") for line in out.splitlines()), out
        assert (results_dir / f"{task}.json").is_file()
        assert "Test metric" in (results_dir / "logs" / f"{task}.log").read_text()
    summary = json.loads((results_dir / "synth_suite.json").read_text())
    assert summary["img_size"] == 32 and summary["encoder"] == "vit_tiny_patch16_224"  # from the checkpoint
    assert set(summary["tasks"]) == set(SUITES["synth"].tasks)
    for task, row in summary["tasks"].items():
        per_task = json.loads(Path(row["results_file"]).read_text())
        assert row["value"] == per_task["metrics"]["val"][per_task["primary_metric"]]
        assert row["occlusion_drop"] == pytest.approx(per_task["occlusion_drop"]["val"])  # occluders are on
        assert row["epochs"] == (0 if task == "synth_verification" else 1)
        assert row["chance"] is not None  # every table carries its chance row: labels alone, no features
    assert summary["tasks"]["synth_pose"]["chance"] > 0 and 0 <= summary["tasks"]["synth_parsing"]["chance"] <= 1
    assert "chance" in next(line for line in out.splitlines() if line.startswith("task "))


def test_suite_errors_are_one_line(tmp_path, run_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = str(run_dir / "last.ckpt")
    before = sorted(run_dir.parent.rglob("*"))  # the module's run folder: other tests write results there
    missing = tmp_path / "nothing"
    cases = [
        (["--model.encoder_ckpt", ckpt, "--data.root", str(missing)], "make data-demo"),
        ([], "--suite needs --model.encoder_ckpt"),
        (["--model.encoder_ckpt", ckpt, "--model.task", "synth_pose"], "drop --model.task"),
        # checked before the first task starts (and writes its log): not inside that log
        (["--model.encoder_ckpt", ckpt, "--model.head_dimm", "8"], "did you mean --model.head_dim?"),
    ]
    for args, message in cases:
        try:
            code = pacofr(["eval", "--suite", "synth", *args])
        except SystemExit as exit_info:  # the parser's own exit
            code = exit_info.code
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and message in err, (args, err)
    with pytest.raises(SystemExit) as exit_info:
        pacofr(["eval", "--suite", "imagenet", "--model.encoder_ckpt", ckpt])
    assert exit_info.value.code == 2 and "invalid choice: 'imagenet'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir()) and sorted(run_dir.parent.rglob("*")) == before  # nothing written


class ParseOnlyEvalCLI(EvalCLI):
    def instantiate_classes(self) -> None:
        pass


@pytest.mark.parametrize("task", SUITES["synth"].tasks)
def test_synth_configs_hold_the_suite_settings(task):
    """configs/eval/synth_<kind>.yaml run one task exactly as `--suite synth` does (given the image size)."""
    args = [*config_args(eval_files(task)), "--model.encoder_ckpt", "x.ckpt"]
    config = make_cli(args, ParseOnlyEvalCLI).config
    for key, value in SUITES["synth"].defaults.items():
        assert config[key] == value, key
    assert config.model.task == config.data.task == task


def test_export_round_trip(tmp_path, capsys, load_exported):
    ckpt = tmp_path / "last.ckpt"
    encoder = write_pretraining_checkpoint(ckpt, img_size=32).eval()
    target = tmp_path / "export" / "encoder.safetensors"
    assert pacofr(["export", "--ckpt", str(ckpt), "--out", str(target)]) == 0
    assert "timm.create_model('vit_tiny_patch16_224'" in capsys.readouterr().out
    model = load_exported(target)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), encoder(x))

    # the exported file scores exactly like the checkpoint it came from (verification: no training)
    root = tmp_path / "synth"
    write_synth(root, list(range(6)) * 2)
    scores = {}
    for name, source in (("ckpt", ckpt), ("export", target)):
        args = ["eval", *config_args(eval_files("synth_verification")), "--model.encoder_ckpt", str(source)]
        args += ["--data.root", str(root), "--model.img_size", "32", "--model.results_dir", str(tmp_path / name)]
        assert pacofr([*args, "--data.num_workers", "0"]) == 0
        scores[name] = json.loads((tmp_path / name / "synth_verification.json").read_text())["metrics"]
    assert scores["ckpt"] == scores["export"]
    assert pacofr(["export", "--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(target)]) == 2


def test_eval_sbatch_runs_each_task_and_names_the_failures(tmp_path, run_dir):
    """slurm/eval.sbatch as a plain script (no SLURM needed): one `pacofr eval` per task, data roots from
    PACOFR_DATA_ROOTS, an unknown task reported at the end with a non-zero exit."""
    root = tmp_path / "synth"
    write_synth(root, list(range(6)) * 2)
    env = {
        **os.environ,
        "PACOFR_CKPT": str(run_dir / "last.ckpt"),
        "PACOFR_EVAL_TASKS": "synth_pose no_such_task",
        "PACOFR_DATA_ROOTS": f"synth_pose={root}",
        "PACOFR_DEVICE": "cpu",
        "PACOFR_PYTHON": sys.executable,
        "PACOFR_REPO": str(REPO),
        "OMP_NUM_THREADS": "1",
    }
    extra = ["--model.img_size=32", "--model.head_dim=16", "--trainer.max_epochs=1", "--data.num_workers=0"]
    extra += [f"--model.results_dir={tmp_path / 'scores'}"]
    proc = subprocess.run(
        ["bash", str(REPO / "slurm" / "eval.sbatch"), *extra], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED tasks: no_such_task" in proc.stdout and "--- synth_pose: end" in proc.stdout
    results = json.loads((tmp_path / "scores" / "synth_pose.json").read_text())
    assert results["config"]["data"]["root"] == str(root) and results["epochs"] == 1
    # the protocol base the task's file names (configs/eval/base/synth.yaml) came first
    assert results["config"]["data"]["occlusion_area"] == 0.25 and results["config"]["model"]["mode"] == "probe"
