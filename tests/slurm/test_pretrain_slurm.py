"""``slurm/pretrain.sbatch`` on the real one-node cluster (CPU variant, 2 tasks, gloo), tiny config, 8 steps.

(a) a job trains to completion; (b) USR1 mid-run: checkpoint at the next step, the job requeues itself, the
second run (SLURM_RESTART_COUNT=1) finishes with every sample key seen exactly once and the same weights as
the uninterrupted run, bit for bit; (c) ``kill -9`` of the tasks mid-run, then a resubmission resumes from the
newest periodic checkpoint, and (d) a truncated newest checkpoint (``last.ckpt``) is skipped in favour of the
previous one (c and d share one job pair). The uninterrupted job of (a) is the reference for the others.
And ``slurm/submit.sh`` chains prep -> merge -> pretrain -> eval with afterok.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from config_files import DEMO, merged_yaml
from slurm_harness import SlurmCluster, read_lines

from pacofr.checkpointing.resolve import checkpoint_global_step, find_checkpoints
from pacofr.study.runner import deep_merge

REPO = Path(__file__).resolve().parents[2]
SBATCH = REPO / "slurm" / "pretrain.sbatch"
MAX_STEPS = 8
BATCH = 4
JOB_TIMEOUT_S = 300  # one start costs ~15-50 s of imports and process-group set-up on 2 busy cores

pytestmark = pytest.mark.slurm


def _write_faces(root: Path) -> Path:
    # the make_shards fixture's writer (tests/conftest.py); a module-scoped fixture cannot request it
    spec = importlib.util.spec_from_file_location("pacofr_tests_conftest", REPO / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.write_synthetic_dataset(root, {"train": [20, 20], "val": [8]}, size=72)


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    return _write_faces(tmp_path_factory.mktemp("faces"))


def job_config(path: Path, faces: Path, run_dir: Path) -> Path:
    cfg = {
        "model": {
            "objective": {
                "init_args": {
                    "num_codes": 32,
                    "incubation_steps": 2,
                    "codebook_options": {"proto_hidden": 32, "belief_hidden": 32, "dead_after": 2, "reseed_every": 2},
                }
            },
            "warmup_steps": 2,
        },
        "data": {"root": str(faces), "image_size": 64, "batch_size": BATCH, "num_workers": 0, "shuffle_buffer": 8},
        "trainer": {
            "max_steps": MAX_STEPS,
            "val_check_interval": 3,
            "limit_val_batches": 1,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "deterministic": True,
            "callbacks": [
                {
                    "class_path": "pacofr.checkpointing.keylog.SampleKeyLog",
                    "init_args": {"dirpath": str(run_dir / "keys")},
                }
            ],
        },
        "checkpoint": {"every_n_train_steps": 2, "keep_last_n": 2},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def submit_pretrain(cluster: SlurmCluster, workdir: Path, run_dir: Path, config: Path) -> int:
    export = ",".join(
        [
            "ALL",
            "PACOFR_DEVICE=cpu",
            f"PACOFR_REPO={REPO}",
            f"PACOFR_PYTHON={sys.executable}",
            f"PACOFR_CONFIG={' '.join(map(str, DEMO))}",  # the demo's config files, in order
            f"PACOFR_RUN_DIR={run_dir}",
        ]  # fmt: skip
    )
    return cluster.submit(
        SBATCH,
        workdir,
        args=[f"--export={export}", "--gpus-per-node=0", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=15"],
        script_args=["--config", str(config)],
    )


def job_log(workdir: Path, job_id: int) -> str:
    return "\n".join(read_lines(workdir / f"pacofr-pretrain-{job_id}.out"))


def step_log(run_dir: Path, job_id: int, restart: int) -> str:
    return "\n".join(read_lines(run_dir / "logs" / f"pretrain-{job_id}-r{restart}.out"))


def keys_seen(run_dir: Path) -> dict[int, list[tuple[int, str]]]:
    """{rank: [(step, key), ...]} in the order written."""
    seen = {}
    for rank in (0, 1):
        seen[rank] = [
            (int(s), k) for s, k in (line.split() for line in read_lines(run_dir / "keys" / f"keys-rank{rank}.txt"))
        ]
    return seen


def last_step_seen(run_dir: Path) -> int:
    lines = read_lines(run_dir / "keys" / "keys-rank0.txt")
    return int(lines[-1].split()[0]) if lines else -1


def wait_for_step(
    cluster: SlurmCluster, job_id: int, run_dir: Path, step: int, timeout_s: float = JOB_TIMEOUT_S
) -> None:
    """Until rank 0 has finished optimiser step ``step`` (0-based) of this job; fails early if the job ends."""
    deadline = time.monotonic() + timeout_s
    while last_step_seen(run_dir) < step:
        job = cluster.job(job_id)
        if job.done or time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} never reached step {step}:\n{job.raw}\n{step_log(run_dir, job_id, 0)}")
        time.sleep(0.2)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == MAX_STEPS
    return ckpt["state_dict"]


def assert_same_weights(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == got.keys()
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert different == [], f"{len(different)} of {len(expected)} tensors differ, e.g. {different[:4]}"


@pytest.fixture(scope="module")
def uninterrupted(slurm_cluster: SlurmCluster, faces: Path, tmp_path_factory) -> dict:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    run_dir = workdir / "run"
    started = time.monotonic()
    job_id = submit_pretrain(slurm_cluster, workdir, run_dir, job_config(workdir / "tiny.yaml", faces, run_dir))
    job = slurm_cluster.wait_until_done(job_id, timeout_s=JOB_TIMEOUT_S)
    return {"job": job, "workdir": workdir, "run_dir": run_dir, "seconds": time.monotonic() - started}


def test_a_cpu_job_with_two_tasks_trains_to_completion(uninterrupted: dict) -> None:
    job, workdir, run_dir = uninterrupted["job"], uninterrupted["workdir"], uninterrupted["run_dir"]
    logs = f"{job.raw}\n{job_log(workdir, job.job_id)}\n{step_log(run_dir, job.job_id, 0)[-6000:]}"
    assert job.state == "COMPLETED" and job.exit_code == "0:0", logs
    assert job.fields["NumTasks"] == "2", logs
    assert f"job {job.job_id} restart 0 end" in job_log(workdir, job.job_id) and "exit=0: finished" in logs, logs
    assert "distributed_backend=gloo" in logs and "Starting with 2 processes" in logs, logs
    assert "no checkpoint in" in logs, logs  # --resume auto on a first run: a fresh start
    final_weights(run_dir)  # global step == max_steps
    # keep_last_n=2 of the periodic checkpoints (every 2 steps), plus last.ckpt
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "last.ckpt",
        "step00000006.ckpt",
        "step00000008.ckpt",
    ]
    assert (run_dir / "config.yaml").is_file() and any((run_dir / "tb").glob("events.out.tfevents.*"))
    seen = keys_seen(run_dir)
    for rank in (0, 1):
        assert [s for s, _ in seen[rank]] == [s for s in range(MAX_STEPS) for _ in range(BATCH)]
    for step in range(MAX_STEPS):  # the two ranks train on different samples
        assert not {k for s, k in seen[0] if s == step} & {k for s, k in seen[1] if s == step}
    print(f"\nuninterrupted 2-task job: submit -> COMPLETED in {uninterrupted['seconds']:.1f} s")


def test_b_usr1_checkpoints_requeues_and_continues_exactly(
    slurm_cluster: SlurmCluster, faces: Path, uninterrupted: dict, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    job_id = submit_pretrain(slurm_cluster, tmp_path, run_dir, job_config(tmp_path / "tiny.yaml", faces, run_dir))
    wait_for_step(slurm_cluster, job_id, run_dir, 1)  # the handler is installed before the first step
    signalled = time.monotonic()
    slurm_cluster.signal(job_id, "USR1")

    # measure: the run again RUNNING after the requeue, and its first trained step
    running_again = first_resumed_step = None
    steps_before = None
    deadline = time.monotonic() + 2 * JOB_TIMEOUT_S
    while True:
        job = slurm_cluster.job(job_id)
        if running_again is None and job.restarts >= 1 and job.state == "RUNNING":
            running_again = time.monotonic()
            steps_before = last_step_seen(run_dir)
        if running_again is not None and first_resumed_step is None and last_step_seen(run_dir) > steps_before:
            first_resumed_step = time.monotonic()
        if job.done or time.monotonic() > deadline:
            break
        time.sleep(0.2)

    first, second = step_log(run_dir, job_id, 0), step_log(run_dir, job_id, 1)
    logs = f"{job.raw}\n{job_log(tmp_path, job_id)}\n--- run 0:\n{first[-5000:]}\n--- run 1:\n{second[-5000:]}"
    assert job.state == "COMPLETED" and job.restarts == 1, logs
    preempted = re.search(
        r"PREEMPTED at global_step=(\d+) checkpoint=(\S+) save_s=([\d.]+) requeued=yes exit=75", first
    )
    assert preempted, logs
    step, save_s = int(preempted.group(1)), float(preempted.group(3))
    assert 2 <= step < MAX_STEPS and preempted.group(2).endswith("preempt.ckpt"), logs
    # the same script ran again, as restart 1, and continued from the preemption checkpoint
    assert f"job {job_id} restart 1 start" in job_log(tmp_path, job_id), logs
    # both tasks left on their own with the "requeued" exit code before SLURM's kill (srun reports it)
    assert re.search(r"tasks? [0-9,-]+: Exited with exit code 75", job_log(tmp_path, job_id)), logs
    assert re.search(rf"continuing from \S+preempt\.ckpt \(preempt, global step {step};", second), logs

    reference = keys_seen(uninterrupted["run_dir"])
    seen = keys_seen(run_dir)
    for rank in (0, 1):
        assert len(set(seen[rank])) == len(seen[rank]), f"rank {rank} trained on some (step, key) twice"
        assert sorted(seen[rank]) == sorted(reference[rank]), f"rank {rank} saw other samples than the reference"
    assert_same_weights(final_weights(uninterrupted["run_dir"]), final_weights(run_dir))
    assert running_again is not None and first_resumed_step is not None
    print(
        f"\nUSR1 at step>=2 -> checkpoint at step {step}: save {save_s:.2f} s; signal -> running again "
        f"{running_again - signalled:.1f} s; -> first resumed step {first_resumed_step - signalled:.1f} s "
        f"(restart start -> first step {first_resumed_step - running_again:.1f} s)"
    )


def _task_pids(job_id: int) -> list[int]:
    """PIDs of this job's training processes (their environment names the job)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if f"SLURM_JOB_ID={job_id}".encode() in environ and b"pacofr.cli" in cmdline and b"srun" not in cmdline:
            pids.append(int(proc.name))
    return pids


def test_c_d_kill9_then_resubmit_skips_a_truncated_newest_and_resumes_from_the_last_periodic(
    slurm_cluster: SlurmCluster, faces: Path, uninterrupted: dict, tmp_path: Path
) -> None:
    """(c) and (d) share one job pair (each job start costs tens of seconds on 2 cores): after the kill,
    ``last.ckpt`` (the newest file) is cut short; the resubmission must skip it with a warning and resume from
    the checkpoint written before it, the newest periodic one."""
    run_dir = tmp_path / "run"
    config = job_config(tmp_path / "tiny.yaml", faces, run_dir)
    job_id = submit_pretrain(slurm_cluster, tmp_path, run_dir, config)
    wait_for_step(slurm_cluster, job_id, run_dir, 4)  # past the periodic checkpoint of step 4
    pids = _task_pids(job_id)
    assert len(pids) == 2, f"expected 2 training processes of job {job_id}, found {pids}"
    killed = time.monotonic()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    job = slurm_cluster.wait_until_done(job_id, timeout_s=60)
    ended_s = time.monotonic() - killed
    assert job.state == "FAILED" and job.exit_code != "0:0", f"{job.raw}\n{job_log(tmp_path, job_id)}"
    assert ": FAILED (see" in job_log(tmp_path, job_id), job_log(tmp_path, job_id)  # the sbatch's end line
    assert last_step_seen(run_dir) < MAX_STEPS - 1, "the job finished before it was killed: nothing tested"
    found, _ = find_checkpoints(run_dir / "checkpoints")
    newest_periodic = [c for c in found if c.kind == "periodic"][-1].global_step
    last = run_dir / "checkpoints" / "last.ckpt"
    assert found[-1].path == last and newest_periodic >= 4  # last.ckpt is the newest file
    with open(last, "r+b") as fh:  # cut short, as a crash mid-write on a non-atomic filesystem leaves it
        fh.truncate(last.stat().st_size // 2)

    again = submit_pretrain(slurm_cluster, tmp_path, run_dir, config)
    job = slurm_cluster.wait_until_done(again, timeout_s=JOB_TIMEOUT_S)
    second = step_log(run_dir, again, 0)
    assert job.state == "COMPLETED", f"{job.raw}\n{second[-6000:]}"
    assert re.search(r"skipping unreadable checkpoint: \S+last\.ckpt: not a complete checkpoint", second), second
    assert re.search(
        rf"continuing from \S+step{newest_periodic:08d}\.ckpt \(periodic, global step {newest_periodic};", second
    ), second
    assert checkpoint_global_step(last) == MAX_STEPS  # rewritten whole by the resumed run
    assert_same_weights(final_weights(uninterrupted["run_dir"]), final_weights(run_dir))
    # steps after the checkpoint were trained twice (the lost work), every earlier one exactly once
    seen, reference = keys_seen(run_dir), keys_seen(uninterrupted["run_dir"])
    for rank in (0, 1):
        assert sorted(set(seen[rank])) == sorted(reference[rank])
        assert len([x for x in seen[rank] if x[0] < newest_periodic]) == BATCH * newest_periodic
    print(
        f"\nkill -9 of both tasks -> job FAILED after {ended_s:.1f} s; resubmission resumed at step {newest_periodic}"
    )


def submit_chain(cluster: SlurmCluster, tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    """``slurm/submit.sh --hold`` on CPU settings (run folder ``tmp_path/run``): the process and {stage: job id}."""
    env = {
        **cluster.env(),
        "PACOFR_RUN_DIR": str(tmp_path / "run"),
        "PACOFR_DEVICE": "cpu",
        "PRETRAIN_ARGS": "--gpus-per-node=0 --ntasks-per-node=2 --cpus-per-task=1",
        "EVAL_ARGS": "--gpus=0",
        **env,
    }
    proc = subprocess.run(
        ["bash", str(REPO / "slurm" / "submit.sh"), "--hold"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return proc, dict(re.findall(r"^(prep|merge|pretrain|eval)\b[^:]*: (\d+)", proc.stdout, flags=re.MULTILINE))


def test_submit_chains_prep_pretrain_eval_with_afterok(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """``slurm/submit.sh`` submits the four stages (held here, so nothing runs) and chains them with afterok."""
    proc, ids = submit_chain(
        slurm_cluster, tmp_path, INPUT=str(tmp_path / "raw"), OUT=str(tmp_path / "faces"), CHUNKS="3"
    )
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert set(ids) == {"prep", "merge", "pretrain", "eval"}, proc.stdout
        dependency = {
            stage: slurm_cluster.job(int(job_id)).fields.get("Dependency", "") for stage, job_id in ids.items()
        }
        assert dependency["merge"].startswith(f"afterok:{ids['prep']}_*"), dependency
        assert dependency["pretrain"].startswith(f"afterok:{ids['merge']}"), dependency
        assert dependency["eval"].startswith(f"afterok:{ids['pretrain']}"), dependency
    finally:
        if ids:
            slurm_cluster.run("scancel", *ids.values(), check=False)


def test_chained_pretraining_reads_the_dataset_the_chain_wrote(
    slurm_cluster: SlurmCluster, faces: Path, tmp_path: Path
) -> None:
    """submit.sh hands OUT (the merged dataset) to pretrain.sbatch, whose --data.root beats the config's."""
    run_dir = tmp_path / "run"
    config = merged_yaml(DEMO)
    tiny = yaml.safe_load(job_config(tmp_path / "tiny.yaml", faces, run_dir).read_text())
    config = deep_merge(config, {k: tiny[k] for k in ("model", "data", "trainer", "checkpoint")})
    config["trainer"]["callbacks"] = []
    config["trainer"]["max_steps"] = 2
    config["data"]["root"] = str(tmp_path / "not-this-one")  # the chain must override it with OUT
    (tmp_path / "method.yaml").write_text(yaml.safe_dump(config))
    proc, ids = submit_chain(
        slurm_cluster,
        tmp_path,
        SKIP_PREP="1",
        OUT=str(faces),
        PACOFR_CONFIG=str(tmp_path / "method.yaml"),
        PACOFR_REPO=str(REPO),
        PACOFR_PYTHON=sys.executable,
        PRETRAIN_ARGS="--gpus-per-node=0 --ntasks-per-node=2 --cpus-per-task=1 --time=15",
    )
    try:
        assert proc.returncode == 0 and set(ids) == {"pretrain", "eval"}, proc.stdout + proc.stderr
        assert f"data {faces}" in proc.stdout
        slurm_cluster.run("scontrol", "release", ids["pretrain"])  # only the pretraining runs; eval stays held
        job = slurm_cluster.wait_until_done(int(ids["pretrain"]), timeout_s=JOB_TIMEOUT_S)
        log = job_log(tmp_path, int(ids["pretrain"]))
        assert job.state == "COMPLETED", f"{job.raw}\n{log}\n{step_log(run_dir, int(ids['pretrain']), 0)}"
        assert f"data_root={faces}" in log
        resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert resolved["data"]["root"] == str(faces)
        assert checkpoint_global_step(run_dir / "checkpoints" / "last.ckpt") == 2
    finally:
        if ids:
            slurm_cluster.run("scancel", *ids.values(), check=False)
