"""The benchmark scripts run end to end in a tiny CPU mode: each prints its table, one JSON line per row with
finite figures, and its baseline measured in the same run, and the summary agrees with the rows. ``make bench``
itself is what runs (the README's command), with tiny sizes in its own variables."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_bench(script: str, *args: str, timeout: float = 150) -> tuple[str, list[dict]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert records, f"{script} printed no JSON line:\n{proc.stdout}"
    return proc.stdout, records


def positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def json_records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


# Tiny sizes, passed the way a user passes them: through the Makefile's variables. The image size is NOT passed:
# train_step.py must find it in the config (data.image_size), as `make bench` needs it to.
BENCH_TRAIN_ARGS = "--threads 1 --no-compile --batch 4 --steps 2 --warmup 1"
BENCH_DATA_ARGS = (
    "--images 16 --batch 4 --image-size 64 --shuffle-buffer 8 --stage-images 8 --decode-images 8 "
    "--decode-repeats 1 --gpu-rate 1000"
)
BENCH_SYNTH_ARGS = "--n 8 --size 64"


@pytest.mark.slow
def test_make_bench_tiny_cpu(tmp_path):
    """``make bench`` (the README's command) end to end: train_step.py, data.py and synth.py, as the Makefile runs
    them, on a small demo dataset written by the same tool as ``make data-demo`` (so that rule has nothing to do)."""
    demo = tmp_path / "synth-demo"
    venv = Path(sys.prefix)  # the Makefile's VENV: this interpreter's virtual environment
    if not (venv / "bin" / "python").exists():
        pytest.skip(f"make bench runs $(VENV)/bin/python; {venv} has none (not a virtual environment)")
    prep = subprocess.run(
        [sys.executable, "-m", "data_prep.cli", "synth", "--out", str(demo), "--n", "48", "--size", "96",
         "--seed", "0", "--val-fraction", "0.25", "--quiet"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert prep.returncode == 0, prep.stderr[-3000:]
    command = [
        "make", "--no-print-directory", "-o", f"{venv}/.installed",  # never (re)install from a test
        "bench", f"VENV={venv}", f"DATA_DEMO={demo}",
        f"BENCH_TRAIN_ARGS={BENCH_TRAIN_ARGS}", f"BENCH_DATA_ARGS={BENCH_DATA_ARGS}",
        f"BENCH_SYNTH_ARGS={BENCH_SYNTH_ARGS}",
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 0, f"make bench failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    stdout, records = proc.stdout, json_records(proc.stdout)

    # bench/train_step.py: MAE and PaCo-FR through the bare loop, PaCo-FR through Trainer.fit
    assert "| step | img/s | step ms |" in stdout
    rows = {(r["method"], r["loop"]): r for r in records if r["bench"] == "train_step"}
    assert set(rows) == {("mae", "bare"), ("pacofr", "bare"), ("pacofr", "lightning")}
    for row in rows.values():
        for key in ("img_per_s", "step_ms", "gflop_per_img", "tflops"):
            assert positive_finite(row[key]), (row["row"], key, row[key])
        assert math.isclose(row["img_per_s"], row["batch"] * 1000 / row["step_ms"], rel_tol=2e-3)
        assert row["mfu"] is None  # no peak on CPU unless --peak is given
        assert row["img_size"] == 112  # tiny.yaml's data.image_size: read from the config, not passed
        assert row["float32_matmul_precision"] == "highest"
    # the codebook, replaced patches and spatial head cost FLOPs that plain MAE does not have
    assert rows[("pacofr", "bare")]["gflop_per_img"] > rows[("mae", "bare")]["gflop_per_img"]
    summary = next(r for r in records if r["bench"] == "train_step_summary")
    expected = rows[("pacofr", "bare")]["img_per_s"] / rows[("mae", "bare")]["img_per_s"]
    assert math.isclose(summary["pacofr_over_mae_eager"], expected, rel_tol=1e-3)
    overhead = 100 * (rows[("pacofr", "lightning")]["step_ms"] / rows[("pacofr", "bare")]["step_ms"] - 1)
    assert math.isclose(summary["lightning_overhead_pct"], overhead, abs_tol=0.02)
    # the demo's config files, composed in order (the size, the method, the codebook at that size)
    demo = ["configs/pretrain/tiny.yaml", "configs/pretrain/method/pacofr.yaml", "configs/pretrain/demo.yaml"]
    assert summary["env"]["torch"] and summary["config"] == demo
    # the numeric policy `pacofr fit` would apply to this config (tiny.yaml: highest = no TF32)
    assert summary["numerics"] == {
        "float32_matmul_precision": "highest", "cuda_matmul_allow_tf32": False, "cudnn_allow_tf32": False,
    }  # fmt: skip

    # bench/data.py on the demo data
    assert "| loop | img/CPU-s |" in stdout
    rows = {r["row"]: r for r in records if r["bench"] == "data"}
    for name in ("bare_pil", "pipeline", "bare_pil+seg", "decode jpeg: PIL", "decode jpeg: torchvision.io"):
        assert name in rows, sorted(rows)
        assert positive_finite(rows[name]["img_per_cpu_s"]) and positive_finite(rows[name]["img_per_s_wall"])
    summary = next(r for r in records if r["bench"] == "data_summary")
    bare = (rows["bare_pil"]["img_per_cpu_s"] + rows["bare_pil (again)"]["img_per_cpu_s"]) / 2
    assert math.isclose(summary["pipeline_over_bare"], rows["pipeline"]["img_per_cpu_s"] / bare, rel_tol=1e-3)
    assert math.isclose(summary["cores_per_gpu"], 1000 / rows["pipeline"]["img_per_cpu_s"], abs_tol=0.06)
    assert set(summary["stage_ms_per_img_cpu"]) == {"read+check", "decode", "augment", "mask", "collate"}
    assert all(positive_finite(v) for v in summary["stage_ms_per_img_cpu"].values())
    assert summary["fastest_decoder"]["jpeg"] in {r["decoder"] for r in rows.values() if r.get("kind") == "jpeg"}

    # bench/synth.py
    synth = next(r for r in records if r["bench"] == "synth")
    assert synth["n"] == 8 and positive_finite(synth["render_faces_per_s"])


def test_scale_bench_small():
    """The plan at scale, scaled down: every plan checked (no sample twice, equal batches per rank), finite figures;
    lanes hold whole batches, so a large layout draws nearly the whole split per epoch."""
    args = ("--samples", "200000", "--shards", "200", "--nodes", "8", "--epochs", "2", "--prep-chunks", "20")
    out, records = run_bench("scale.py", *args)
    plans = {r["lanes"]: r for r in records if r["bench"] == "scale_plan"}
    assert sorted(plans) == [64, 512]
    assert all(positive_finite(r["plan_s_median"]) and positive_finite(r["epoch_draw_ratio"]) for r in plans.values())
    # 512 lanes of 390 samples, batch 256: the old rule (whole batches per even lane) drew 66 %, now 98 %
    assert plans[512]["rank_batches_per_epoch"] == 200000 // (64 * 256) and plans[512]["epoch_draw_ratio"] > 0.95
    manifest = next(r for r in records if r["bench"] == "scale_manifest")
    assert manifest["shards"] == 200 and manifest["bytes"] > 0
    assert "no sample in two lanes" in out
    prep = [r for r in records if r["bench"] == "scale_prep"]
    assert [r["chunks"] for r in prep] == [10, 20] and prep[-1]["missing_named"] == prep[-1]["missing_chunks"]
