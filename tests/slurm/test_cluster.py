"""The one-node test cluster runs the job shapes a SLURM training run relies on.

(a) a 2-task srun step, one task per core; (b) USR1 delivered to a task by ``scancel``, the task
requeues its own job, the second run sees SLURM_RESTART_COUNT=1; (c) a task killed by SIGKILL
ends the step at once with ``--kill-on-bad-exit=1``; and ``cluster.sh start`` is idempotent.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from slurm_harness import CLUSTER_SH, SlurmCluster, read_lines, read_rank_files, wait_for_file

REPO = Path(__file__).resolve().parents[2]
JOBS = Path(__file__).with_name("jobs")

pytestmark = pytest.mark.slurm


def test_two_task_srun_job_runs_one_task_per_core(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    job_id = slurm_cluster.submit(REPO / "slurm" / "cpu_smoke.sbatch", workdir=tmp_path)
    job = slurm_cluster.wait_until_done(job_id, timeout_s=60)

    output = "\n".join(read_lines(tmp_path / f"pacofr-cpu-smoke-{job_id}.out"))
    assert job.state == "COMPLETED", f"{job.raw}\n{output}"
    assert (job.fields["NumTasks"], job.fields["CPUs/Task"]) == ("2", "1")
    # {rank: (local_rank, world_size)}: both tasks ran, on this one node.
    assert read_rank_files(tmp_path) == {0: (0, 2), 1: (1, 2)}


def test_usr1_to_task_requeues_job_and_second_run_sees_restart_count(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    job_id = slurm_cluster.submit(
        JOBS / "usr1_requeue.sbatch", workdir=tmp_path, script_args=[str(JOBS / "usr1_requeue_task.sh")]
    )
    # The signal must not come before the task's trap exists (USR1's default action kills).
    wait_for_file(tmp_path / "trap-ready", timeout_s=60, cluster=slurm_cluster, job_id=job_id)
    signalled = time.monotonic()
    slurm_cluster.signal(job_id, "USR1")

    # cluster.sh sets AuthInfo=cred_expire=5, so the requeued job is eligible ~6 s later (120 s by default).
    # Right after the requeue the old run is COMPLETING with Restarts=1 already: wait for the new run.
    rerun = slurm_cluster.wait_for(
        job_id,
        lambda j: j.restarts >= 1 and (j.state == "RUNNING" or j.done),
        timeout_s=100,
        what="running again after requeue",
    )
    requeue_to_rerun_s = time.monotonic() - signalled
    job = slurm_cluster.wait_until_done(job_id, timeout_s=60)

    events = read_lines(tmp_path / "events.txt")
    detail = f"{job.raw}\nevents: {events}\njob.out: {read_lines(tmp_path / 'job.out')}"
    assert job.state == "COMPLETED", detail
    assert job.restarts == 1 == rerun.restarts, detail
    expected_in_order = [
        "batch start restart=unset",
        "task start rank=0 restart=unset",
        "task got USR1 rank=0 restart=unset",
        "requeue ok",
        "batch start restart=1",
        "task start rank=0 restart=1",
        "task second run done restart=1",
        "batch end restart=1 srun_rc=0",
    ]
    # The first run's batch shell may or may not log its end before the requeue kills it.
    assert [e for e in events if not e.startswith("batch end restart=unset")] == expected_in_order, detail
    # What this shows is cred_expire=5 in effect (the default would hold the job >= 120 s), not speed: the
    # bound leaves a loaded machine room.
    assert requeue_to_rerun_s < 100, f"requeued job took {requeue_to_rerun_s:.1f} s to run again"
    print(f"USR1 -> requeue -> running again: {requeue_to_rerun_s:.1f} s")


def test_sigkilled_task_ends_the_step_with_kill_on_bad_exit(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    started = time.monotonic()
    job_id = slurm_cluster.submit(JOBS / "kill9_rank.sbatch", workdir=tmp_path)
    job = slurm_cluster.wait_until_done(job_id, timeout_s=60)
    elapsed_s = time.monotonic() - started

    output = read_lines(tmp_path / "job.out")
    detail = f"{job.raw}\njob.out: {output}"
    assert job.state == "FAILED" and job.exit_code != "0:0", detail
    assert (tmp_path / "rank0.started").exists() and (tmp_path / "rank1.started").exists(), detail
    # Rank 0 would run 60 s on its own; srun ended it when rank 1 died.
    assert not (tmp_path / "rank0.finished").exists(), detail
    # Alone, rank 0 sleeps 60 s: a shorter job is one that ended it (a behavioural bound, not a speed claim).
    assert elapsed_s < 60, f"the job took {elapsed_s:.1f} s: rank 0 was not ended with rank 1\n{detail}"
    assert any("task 1: Killed" in line for line in output), detail


def _daemon_pids(conf: Path) -> dict[str, str]:
    """``{"SlurmctldPidFile": pid, "SlurmdPidFile": pid}`` from the pid files that the cluster's slurm.conf names."""
    keys = ("SlurmctldPidFile", "SlurmdPidFile")
    files = dict(line.strip().split("=", 1) for line in conf.read_text().splitlines() if line.startswith(keys))
    return {key: Path(files[key]).read_text().strip() for key in keys}


def test_cluster_start_is_a_no_op_when_running(slurm_cluster: SlurmCluster) -> None:
    # No-op means the running daemons are kept (a restart would give them new pids and log "started in"),
    # not that it is fast: its wall time depends on the machine's load, so it is not asserted.
    before = _daemon_pids(slurm_cluster.conf)
    proc = subprocess.run(
        ["bash", str(CLUSTER_SH), "start"], capture_output=True, text=True, env=slurm_cluster.env(), timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "already running" in proc.stderr and "started in" not in proc.stderr, proc.stderr
    assert _daemon_pids(slurm_cluster.conf) == before, proc.stderr
