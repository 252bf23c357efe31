"""``bench/gpu_check.sh``, the prepared first GPU run, in its CPU dry run: every step runs (or says why not) and writes
its JSON line, the fits continue from their checkpoints, and the results stay within what the device tool brings
back (at most 8 files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.sh"
STEPS = [
    "env",
    "deps",
    "data",
    "numerics",
    "nvjpeg",
    "fit",
    "fit_resume",
    "fsdp",
    "fsdp_resume",
    "train_step",
    "data_bench",
    "fsdp_compare",
    "total",
]


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.mark.extended  # larger-scale repeat of CI-covered paths (make test-extended)
@pytest.mark.slow
@pytest.mark.timeout(960)
def test_dry_run_runs_every_step(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PY": sys.executable, "TMPDIR": str(tmp_path)}
    env.pop("OUT", None)
    # a generous deadline: on a loaded 2-core machine the run takes minutes; a step cut by the deadline would be an
    # "explicit skip" and hide what this test is for
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--deadline", "840", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,  # the script finds the repo itself
        env=env,
    )
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    printed = lines(proc.stdout)
    summary = lines((out / "summary.jsonl").read_text())
    assert printed == summary  # one JSON line per step, on stdout and in the summary file alike
    by_step = {line["step"]: line for line in summary}
    assert [line["step"] for line in summary] == STEPS
    for name, line in by_step.items():
        assert line["rc"] == 0, line
        expected = {"deps": "skipped: dry run", "nvjpeg": "skipped: no CUDA"}.get(name, "ok")
        if name == "nvjpeg" and line["status"].startswith("missing"):
            expected = "missing"  # the check's function is not in pacofr.data.device_images (reported, not failed)
        if name != "total":
            assert line["status"].startswith(expected), line
            assert line["seconds"] >= 0
    assert by_step["total"]["failed"] == ""

    # the key figures: the policy the fits ran with, the resumes continued from their checkpoints
    assert by_step["env"]["torch"] and by_step["env"]["missing_packages"] == []
    assert by_step["numerics"]["changed_by_high"]["argmin"] == 0.0  # a CPU has no TF32
    fit, resumed = by_step["fit"]["runcheck"], by_step["fit_resume"]["runcheck"]
    assert fit["ok"] and fit["last_step"] == 2 and fit["starts"] == 1 and not fit["last_sharded"]
    assert resumed["ok"] and resumed["last_step"] == 4 and resumed["starts"] == 2
    assert resumed["restored_from"].endswith("last.ckpt") and fit["float32_matmul_precision"] == "highest"
    sharded = by_step["fsdp_resume"]["runcheck"]
    assert sharded["ok"] and sharded["last_sharded"] and sharded["last_step"] == 4 and sharded["restored_from"]
    train = by_step["train_step"]
    assert set(train["img_per_s"]) == {"mae eager", "pacofr eager", "pacofr eager (Trainer.fit)"}
    assert train["numerics"]["float32_matmul_precision"] == "highest"
    assert set(train["sync_sentinel"]) == {"bare mae eager", "bare pacofr eager"}
    assert by_step["data_bench"]["cores_per_gpu"] > 0
    compared = by_step["fsdp_compare"]["fsdp_compare"]
    assert set(compared) == {"ddp", "fsdp1", "fsdp2"} and all(row["ok"] for row in compared.values()), compared

    # what the device tool brings back: at most 8 plain files, no folders; scratch went elsewhere and is gone
    files = sorted(p.name for p in out.iterdir())
    assert all((out / f).is_file() for f in files) and len(files) <= 8, files
    assert {"summary.jsonl", "setup.log", "fit.log", "fsdp.log", "train_step.txt", "data.txt"} <= set(files)
    assert not list(tmp_path.glob("gpu_check.*"))


def test_summarize_folds_a_step_log_into_one_line(tmp_path):
    log = tmp_path / "step.log"
    records = [
        {"gpu_check": "runcheck", "ok": False, "problems": ["last.ckpt at step 2, expected 4"]},
        {"bench": "train_step", "row": "pacofr compiled", "img_per_s": 10.0, "mfu": 0.3, "peak_mem_gib": 1.0},
        {"bench": "train_step_summary", "pacofr_over_mae_compiled": 0.9, "numerics": {"x": 1},
         "host_device_syncs_per_step": {"bare pacofr compiled": {"a.py:1 (x.item())": 2}}},
    ]  # fmt: skip
    log.write_text("noise\n" + "\n".join(json.dumps(r) for r in records) + "\nTraceback: boom\n")
    summary = tmp_path / "summary.jsonl"
    args = ["summarize", "--step", "fit", "--rc", "1", "--seconds", "3.21", "--log", str(log), "--summary"]
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), *args, str(summary)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    line = json.loads(proc.stdout)
    assert line == json.loads(summary.read_text())
    assert line["step"] == "fit" and line["status"] == "failed" and line["seconds"] == 3.2
    assert line["runcheck"]["problems"] == ["last.ckpt at step 2, expected 4"]
    assert line["img_per_s"] == {"pacofr compiled": 10.0} and line["pacofr_over_mae_compiled"] == 0.9
    assert line["syncs_per_step"] == {"bare pacofr compiled": 2} and line["log_tail"][-1] == "Traceback: boom"


def test_a_run_needs_somewhere_to_write(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2 and "$OUT or a folder argument" in proc.stderr
