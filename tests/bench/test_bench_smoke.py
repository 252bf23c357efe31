"""The benchmark scripts run end to end in a tiny CPU mode: each prints its table, one JSON line per row with
finite figures, and its baseline measured in the same run, and the summary agrees with the rows."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

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


def test_train_step_bench_tiny_cpu():
    stdout, records = run_bench(
        "train_step.py", "--no-compile", "--img-size", "64", "--batch", "4", "--steps", "2", "--warmup", "1",
        "--threads", "1",
    )  # fmt: skip
    assert "| step | img/s | step ms |" in stdout
    rows = {(r["method"], r["loop"]): r for r in records if r["bench"] == "train_step"}
    assert set(rows) == {("mae", "bare"), ("pacofr", "bare"), ("pacofr", "lightning")}
    for row in rows.values():
        for key in ("img_per_s", "step_ms", "gflop_per_img", "tflops"):
            assert positive_finite(row[key]), (row["row"], key, row[key])
        assert math.isclose(row["img_per_s"], row["batch"] * 1000 / row["step_ms"], rel_tol=2e-3)
        assert row["mfu"] is None  # no peak on CPU unless --peak is given
    # the codebook, replaced patches and spatial head cost FLOPs that plain MAE does not have
    assert rows[("pacofr", "bare")]["gflop_per_img"] > rows[("mae", "bare")]["gflop_per_img"]
    summary = next(r for r in records if r["bench"] == "train_step_summary")
    expected = rows[("pacofr", "bare")]["img_per_s"] / rows[("mae", "bare")]["img_per_s"]
    assert math.isclose(summary["pacofr_over_mae_eager"], expected, rel_tol=1e-3)
    overhead = 100 * (rows[("pacofr", "lightning")]["step_ms"] / rows[("pacofr", "bare")]["step_ms"] - 1)
    assert math.isclose(summary["lightning_overhead_pct"], overhead, abs_tol=0.02)
    assert summary["env"]["torch"] and summary["config"].endswith("demo_tiny.yaml")


def test_data_bench_tiny_cpu(tmp_path, make_shards):
    root = make_shards(tmp_path / "faces", {"train": [24, 16]}, size=64)
    stdout, records = run_bench(
        "data.py", "--root", str(root), "--images", "16", "--batch", "4", "--image-size", "64",
        "--shuffle-buffer", "8", "--stage-images", "8", "--decode-images", "8", "--decode-repeats", "1",
        "--gpu-rate", "1000",
    )  # fmt: skip
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
