"""Drive the one-node test cluster of ``cluster.sh`` from Python: start it, submit jobs, watch them.

There is no accounting daemon (no ``sacct``): a job's state is read from ``scontrol show job``,
which keeps finished jobs for ``MinJobAge`` (600 s in the generated slurm.conf), and from the
files the job writes.

    cluster = start_cluster()                        # raises ClusterUnavailable when it cannot run here
    job_id = cluster.submit(script, workdir=tmp_path, args=["--requeue"])
    job = cluster.wait_until_done(job_id, timeout_s=60)
    assert job.state == "COMPLETED" and job.restarts == 1
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

CLUSTER_SH = Path(__file__).with_name("cluster.sh")
DEFAULT_CONF = Path("/etc/slurm/slurm.conf")

# cluster.sh exit codes (see its header).
_EXIT_NOT_ROOT = 2
_EXIT_NO_SLURM_NO_APT = 3

# Job states after which a job never runs again (a requeued job passes through PENDING instead).
TERMINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
)


class ClusterUnavailable(RuntimeError):
    """The cluster cannot run on this machine (not root, or slurm absent and apt unreachable)."""


@dataclass(frozen=True)
class JobInfo:
    """One ``scontrol show job -o`` record; ``fields`` holds every key, ``raw`` the whole line."""

    job_id: int
    fields: dict[str, str]
    raw: str

    @property
    def state(self) -> str:
        return self.fields["JobState"]

    @property
    def restarts(self) -> int:
        return int(self.fields["Restarts"])

    @property
    def reason(self) -> str:
        return self.fields.get("Reason", "")

    @property
    def exit_code(self) -> str:
        """``"<exit status>:<signal>"`` of the batch script, e.g. ``"0:0"``."""
        return self.fields["ExitCode"]

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES


def parse_job_line(line: str) -> JobInfo:
    """Parse ``scontrol show job -o`` output (``Key=value`` pairs separated by spaces).

    Values with spaces (a command with arguments, a comment) end up cut at the first space;
    the fields the tests read (JobState, Restarts, ExitCode, Reason, NumTasks...) never have one.
    """
    fields: dict[str, str] = {}
    for token in line.split():
        key, sep, value = token.partition("=")
        if sep and key not in fields:
            fields[key] = value
    if "JobId" not in fields or "JobState" not in fields:
        raise ValueError(f"not a 'scontrol show job -o' record: {line!r}")
    return JobInfo(job_id=int(fields["JobId"]), fields=fields, raw=line)


@dataclass(frozen=True)
class SlurmCluster:
    """A running cluster; every method calls the real Slurm client commands."""

    conf: Path
    started_here: bool  # True when start_cluster() started it (so the session should stop it)

    def env(self) -> dict[str, str]:
        """The environment for Slurm client commands (and for jobs: sbatch passes it on)."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, check: bool = True, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env(), timeout=timeout_s)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc

    def submit(
        self, script: str | Path, workdir: str | Path, args: Sequence[str] = (), script_args: Sequence[str] = ()
    ) -> int:
        """``sbatch --chdir=workdir *args script *script_args``; returns the job id."""
        out = self.run("sbatch", "--parsable", f"--chdir={workdir}", *args, str(script), *script_args).stdout
        return int(out.strip().split(";")[0])

    def job(self, job_id: int) -> JobInfo:
        return parse_job_line(self.run("scontrol", "show", "job", "-o", str(job_id)).stdout.strip())

    def signal(self, job_id: int, signal: str = "USR1", batch_only: bool = False) -> None:
        """``scancel --signal``: to every step's tasks, or with ``batch_only`` to the batch shell only."""
        self.run("scancel", f"--signal={signal}", *(["--batch"] if batch_only else []), str(job_id))

    def wait_for(self, job_id: int, predicate: Callable[[JobInfo], bool], timeout_s: float, what: str) -> JobInfo:
        """Poll the job until ``predicate(job)``; on timeout raise with the job record and daemon logs."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if predicate(job):
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id}: not {what} after {timeout_s:.0f} s\n{job.raw}\n{self.logs()}")
            time.sleep(0.2)

    def wait_until_done(self, job_id: int, timeout_s: float = 60) -> JobInfo:
        return self.wait_for(job_id, lambda j: j.done, timeout_s, "finished")

    def logs(self) -> str:
        return subprocess.run(["bash", str(CLUSTER_SH), "logs"], capture_output=True, text=True, timeout=30).stderr

    def cancel_all(self) -> None:
        """Cancel every job of the cluster (a test's leftovers must not hold the CPUs)."""
        ids = self.run("squeue", "-h", "-o", "%A").stdout.split()
        if ids:
            self.run("scancel", "--full", *ids, check=False)


def wait_for_file(path: Path, timeout_s: float, cluster: SlurmCluster | None = None, job_id: int | None = None) -> None:
    """Wait until ``path`` exists; fail early (with the job record) if the job ends first."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        job = cluster.job(job_id) if cluster is not None and job_id is not None else None
        if job is not None and job.done:
            raise RuntimeError(f"job {job_id} ended before writing {path}:\n{job.raw}")
        if time.monotonic() > deadline:
            detail = f"\n{job.raw}\n{cluster.logs()}" if job is not None and cluster is not None else ""
            raise TimeoutError(f"{path} not written after {timeout_s:.0f} s{detail}")
        time.sleep(0.1)


def _status_ok(env: dict[str, str]) -> bool:
    return subprocess.run(["bash", str(CLUSTER_SH), "status"], capture_output=True, env=env, timeout=60).returncode == 0


def start_cluster(timeout_s: float = 900) -> SlurmCluster:
    """Run ``cluster.sh start`` (installing slurm from apt when missing) and return the cluster.

    Raises ClusterUnavailable when not root, or when slurm is absent and apt cannot install it;
    RuntimeError (with the daemon logs) for any other failure.
    """
    if os.geteuid() != 0:
        raise ClusterUnavailable("the test cluster needs root (it starts munged, slurmctld and slurmd)")
    conf = Path(os.environ.get("PACOFR_SLURM_CONF", DEFAULT_CONF))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    was_running = shutil.which("slurmctld") is not None and _status_ok(env)
    proc = subprocess.run(
        ["bash", str(CLUSTER_SH), "start"], capture_output=True, text=True, env=env, timeout=timeout_s
    )
    output = f"{proc.stdout}{proc.stderr}"
    if proc.returncode == _EXIT_NOT_ROOT:
        raise ClusterUnavailable(f"cluster.sh: not root\n{output}")
    if proc.returncode == _EXIT_NO_SLURM_NO_APT:
        raise ClusterUnavailable(f"slurm is not installed and apt cannot install it\n{output}")
    if proc.returncode != 0:
        raise RuntimeError(f"cluster.sh start failed ({proc.returncode}):\n{output}")
    return SlurmCluster(conf=conf, started_here=not was_running)


def stop_cluster(cluster: SlurmCluster) -> None:
    proc = subprocess.run(
        ["bash", str(CLUSTER_SH), "stop"], capture_output=True, text=True, env=cluster.env(), timeout=120
    )
    if proc.returncode != 0:
        raise RuntimeError(f"cluster.sh stop failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


_RANK_LINE = re.compile(r"rank=(\d+) local_rank=(\d+) world_size=(\d+)")


def read_rank_files(workdir: Path) -> dict[int, tuple[int, int]]:
    """``{rank: (local_rank, world_size)}`` from the ``rank<N>.txt`` files of slurm/cpu_smoke.sbatch."""
    ranks: dict[int, tuple[int, int]] = {}
    for path in sorted(workdir.glob("rank*.txt")):
        match = _RANK_LINE.search(path.read_text())
        if match is None:
            raise ValueError(f"{path}: unexpected content {path.read_text()!r}")
        rank, local_rank, world_size = (int(g) for g in match.groups())
        ranks[rank] = (local_rank, world_size)
    return ranks
