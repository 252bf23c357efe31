"""``slurm/study_submit.sh`` + ``slurm/study.sbatch`` on the real one-node cluster: the quick grid of
configs/study/default.yaml (2 cells: mae/seed0 and pacofr/seed0, 6 pretraining steps each) runs as a 2-task
array, then the afterok aggregate job writes the table from both cells."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from slurm_harness import JobInfo, SlurmCluster, parse_job_line, read_lines

REPO = Path(__file__).resolve().parents[2]
SUBMIT = REPO / "slurm" / "study_submit.sh"
STUDY = "default_quick"
ARMS = ("mae", "pacofr")
# Each cell asks for both CPUs of the 2-core test node, so the cells run one after the other (~15-60 s each on
# busy cores, imports included); the first cluster start (apt install) is paid by the fixture, not here.
JOBS_TIMEOUT_S = 900

# the study on SLURM (array + afterok aggregate): the study itself runs in CI (test_study_cli), SLURM arrays in
# tests/slurm/test_pretrain_slurm.py; this repeat of both runs in `make test-extended`
pytestmark = [pytest.mark.slurm, pytest.mark.extended]


@pytest.fixture(scope="module")
def study_faces(tmp_path_factory) -> Path:
    pytest.importorskip("cv2")
    from data_prep.cli import main

    root = tmp_path_factory.mktemp("study-slurm") / "faces"
    args = ["synth", "--out", str(root), "--n", "240", "--size", "128", "--seed", "3", "--val-fraction", "0.25"]
    assert main([*args, "--quiet"]) == 0
    return root


def array_tasks(cluster: SlurmCluster, array_id: int) -> list[JobInfo]:
    """Every record of an array job (one per task once split; one ``ArrayTaskId=0-1`` record while pending)."""
    out = cluster.run("scontrol", "show", "job", "-o", str(array_id)).stdout
    return [parse_job_line(line) for line in out.splitlines() if line.strip()]


def wait_for_array(cluster: SlurmCluster, array_id: int, tasks: int, timeout_s: float) -> list[JobInfo]:
    """Until the array is split into ``tasks`` task records that have all ended (or one ended badly)."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = array_tasks(cluster, array_id)
        split = all(r.fields.get("ArrayTaskId", "").isdigit() for r in records)
        if split and len(records) == tasks and all(r.done for r in records):
            return records
        if any(r.done and r.state != "COMPLETED" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def numbers(tree: Any) -> list[float]:
    """Every number in a nested dict/list (booleans left out)."""
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in numbers(v)]
    if isinstance(tree, list):
        return [x for v in tree for x in numbers(v)]
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return [float(tree)]
    return []


def test_study_array_then_afterok_aggregate(slurm_cluster: SlurmCluster, study_faces: Path, tmp_path: Path) -> None:
    root = tmp_path / "studies"
    env = {
        **slurm_cluster.env(),
        "STUDY_QUICK": "1",
        "STUDY_ROOT": str(root),
        "STUDY_DATA_ROOT": str(study_faces),
        "PACOFR_PYTHON": sys.executable,
        "PACOFR_REPO": str(REPO),
    }
    for leftover in ("STUDY_CONFIG", "STUDY_STEP", "STUDY_AFTER", "CELL_ARGS", "AGGREGATE_ARGS"):
        env.pop(leftover, None)
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", str(SUBMIT), "configs/study/default.yaml", "--time=20"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = dict(re.findall(r"^(cells|aggregate)\b[^:]*: (\d+)$", proc.stdout, flags=re.MULTILINE))
    assert set(found) == {"cells", "aggregate"}, proc.stdout
    array_id, aggregate_id = int(found["cells"]), int(found["aggregate"])
    assert "cells (array of 2)" in proc.stdout, proc.stdout

    # the aggregate waits on the whole array (checked at once: the first cell alone takes longer than this)
    dependency = slurm_cluster.job(aggregate_id).fields.get("Dependency", "")
    assert dependency.startswith(f"afterok:{array_id}_*"), dependency

    def logs() -> str:
        parts = [proc.stdout]
        for path in sorted(tmp_path.glob("pacofr-study*.out")):
            parts.append(f"--- {path.name}:\n" + "\n".join(read_lines(path)[-40:]))
        for path in sorted(root.glob(f"{STUDY}/*/seed0/pretrain.log")):
            parts.append(f"--- {path}:\n" + "\n".join(read_lines(path)[-40:]))
        return "\n".join(parts)

    tasks = wait_for_array(slurm_cluster, array_id, 2, JOBS_TIMEOUT_S)
    records = "\n".join(r.raw for r in tasks)
    assert len(tasks) == 2, f"{records}\n{logs()}"
    assert sorted(int(r.fields["ArrayTaskId"]) for r in tasks) == [0, 1], records
    assert all(r.fields["ArrayJobId"] == str(array_id) for r in tasks), records
    for task in tasks:
        assert task.state == "COMPLETED" and task.exit_code == "0:0", f"{records}\n{logs()}"
    remaining = max(60.0, JOBS_TIMEOUT_S - (time.monotonic() - started))
    aggregate = slurm_cluster.wait_until_done(aggregate_id, timeout_s=remaining)
    elapsed = time.monotonic() - started
    assert aggregate.state == "COMPLETED" and aggregate.exit_code == "0:0", f"{aggregate.raw}\n{logs()}"
    # afterok: the aggregate started only after both cells ended (scontrol times have 1 s resolution)
    assert aggregate.fields["StartTime"] >= max(r.fields["EndTime"] for r in tasks), f"{aggregate.raw}\n{records}"

    # one job log per array task, each with its start and successful end line
    for index in (0, 1):
        cell_log = "\n".join(read_lines(tmp_path / f"pacofr-study-{array_id}_{index}.out"))
        assert f"=== pacofr study: cell {index} " in cell_log and "exit=0" in cell_log, logs()
    aggregate_log = "\n".join(read_lines(tmp_path / f"pacofr-study-aggregate-{aggregate_id}.out"))
    assert "=== pacofr study: aggregate" in aggregate_log and "exit=0" in aggregate_log, logs()

    folder = root / STUDY
    for arm in ARMS:
        result = json.loads((folder / arm / "seed0" / "result.json").read_text())
        assert result["arm"] == arm and result["seed"] == 0 and result["study"] == STUDY
        assert result["pretrain"]["steps"] == 6, result["pretrain"]
        values = numbers(result["scores"])
        assert values and all(math.isfinite(v) for v in values), result["scores"]
    table = (folder / "table.md").read_text()
    assert all(f"(`{arm}`)" in table for arm in ARMS), table  # one row per arm: "label (`arm`)"
    assert "Missing cells" not in table, table
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["cells"] == 2 and summary["missing_cells"] == [], summary
    assert any((folder / "img").glob("*.png")) and (folder / "tb").is_dir()
    print(f"\nstudy quick grid on SLURM: 2-task array + afterok aggregate, submit -> COMPLETED in {elapsed:.1f} s")
