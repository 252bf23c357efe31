"""Preemption: checkpoint at the next step boundary on every rank, then requeue the SLURM job.

The signal handler only sets a flag: saving inside the handler can interrupt a collective halfway and hang
the job (Lightning-AI/pytorch-lightning#21406). At a step boundary the host reads that flag; it costs nothing,
and a single process acts on it at once. Several processes must stop at the same step even when only some got the
signal, so they *agree*: an all-reduce (MAX) of the flags and a read of the result, which waits for the device's
queue to drain. They do that not at every step but at agreed boundaries, about every ``agree_every_s`` seconds: the
agreement also carries each rank's seconds per step since the last one, and every rank derives the next
agreement's step from the slowest (the same number on every rank, so they all meet there). The interval starts at
one step and at most doubles per agreement, so a run agrees often while it is young (and while the step time is
unknown) and about every ``agree_every_s`` seconds from then on. With SLURM's ``--signal=USR1@120`` a job has
120 s between the signal and its time limit: the wait for the next agreement (about ``agree_every_s``, plus a
validation or a periodic checkpoint if one falls in that window) and the checkpoint itself must fit in them.
``agree_every_n_steps`` agrees at every multiple of a fixed number of steps instead (1: every step). Then:

1. every rank takes part in writing ``<checkpoint dir>/preempt.ckpt`` (atomic; one file, overwritten, so
   preemption checkpoints never pile up; a sharded FSDP checkpoint is a folder of that name);
2. SIGTERM is noted instead of killing us (``scontrol requeue`` makes SLURM terminate the job's tasks);
3. rank 0 runs ``scontrol requeue $SLURM_JOB_ID`` and tells the others whether it worked;
4. every rank leaves with ``EXIT_REQUEUED`` (75, at once: SLURM is ending the step anyway) or, through a
   ``Preempted`` exception and Lightning's normal teardown, ``EXIT_PREEMPTED`` (76: checkpoint written but
   nobody requeued the job: outside SLURM, requeue disabled, or scontrol failed; resume with ``--resume auto``).

Lightning's own SLURM requeue is disabled by the CLI (``SLURMEnvironment(auto_requeue=False)``): it saves in
the handler, under a name (``hpc_ckpt_N``) that our resume resolution does not use.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint

from pacofr.checkpointing.resolve import PREEMPT_NAME

log = logging.getLogger(__name__)

EXIT_REQUEUED = 75  # EX_TEMPFAIL: checkpointed, and the job is queued again
EXIT_PREEMPTED = 76  # checkpointed, not requeued: resume by hand with --resume auto


_early_signal: list[int] = []  # a preemption signal that arrived before the trainer was set up


def catch_early_preemption_signal(names: tuple[str, ...] = ("SIGUSR1",)) -> None:
    """Record (instead of dying of: USR1's default action kills) a preemption signal that arrives while the
    job is still importing and building the trainer; ``PreemptionHandler`` acts on it at the first step."""
    if threading.current_thread() is not threading.main_thread():
        return
    for name in names:
        signal.signal(signal.Signals[name], lambda signum, frame: _early_signal.append(signum))


class Preempted(SystemExit):
    """Raised on every rank after the preemption checkpoint; the process exits with its code."""


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_max(values: list[float], device: torch.device) -> list[float]:
    """The element-wise MAX over the ranks, read on the host (one all-reduce and one blocking read)."""
    flags = torch.tensor(values, dtype=torch.float64, device=device)
    if _distributed():
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags.tolist()


def requeue_slurm_job(job_id: str, timeout_s: float = 60) -> tuple[bool, str]:
    """``scontrol requeue JOB``; returns (ok, message)."""
    try:
        proc = subprocess.run(
            ["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"scontrol requeue {job_id} could not run: {exc}"
    if proc.returncode != 0:
        return False, f"scontrol requeue {job_id} failed ({proc.returncode}): {proc.stderr.strip()}"
    return True, f"job {job_id} requeued"


class PreemptionHandler(Checkpoint):
    """Turns a signal (SIGUSR1 by default, what ``#SBATCH --signal=USR1@120`` sends) into a checkpoint at the
    next step boundary and a requeue. A ``Checkpoint`` subclass, so it runs after the periodic checkpoint.

    Args:
        signals: signal names that request a preemption checkpoint.
        requeue: run ``scontrol requeue $SLURM_JOB_ID`` (rank 0) when running inside a SLURM job.
        dirpath: folder of ``preempt.ckpt``; None: the run's checkpoint folder.
        agree_every_s: with several processes, about how many seconds apart they agree on whether to stop (one
            all-reduce and one blocking read each time; see the module docstring). The longest wait between a
            signal and the checkpoint is about this long, so keep it well under the signal's lead time (120 s with
            ``--signal=USR1@120``) minus the checkpoint's save time.
        agree_every_n_steps: agree at every multiple of this many optimiser steps instead (1: at every step, a
            blocking read per step); None: every ``agree_every_s`` seconds.
    """

    MAX_INTERVAL = 10_000  # steps between agreements, whatever the step time

    def __init__(
        self,
        signals: list[str] | None = None,
        requeue: bool = True,
        dirpath: str | None = None,
        agree_every_s: float = 10.0,
        agree_every_n_steps: int | None = None,
    ) -> None:
        if agree_every_s <= 0 or (agree_every_n_steps is not None and agree_every_n_steps < 1):
            raise ValueError(
                f"need agree_every_s > 0 and agree_every_n_steps >= 1 or None, got {agree_every_s}, "
                f"{agree_every_n_steps}"
            )
        self.signals = list(signals) if signals is not None else ["SIGUSR1"]
        self.requeue = requeue
        self.dirpath = dirpath
        self.agree_every_s = agree_every_s
        self.agree_every_n_steps = agree_every_n_steps
        self.signalled: int | None = None  # set by the handler, read at the step boundary
        self.sigterm_after_requeue = False
        self._previous: dict[int, Any] = {}
        self._step_at_batch_start = -1
        # the agreement schedule (several processes): the step of the next one, the interval that led there, and
        # (step, time) of the last one; the same on every rank, since it is computed from agreed numbers only
        self._next_agreement: int | None = None  # None: at the next step boundary
        self._interval = 1
        self._last_agreement: tuple[int, float] | None = None

    @property
    def state_key(self) -> str:
        return "PreemptionHandler"

    # --- signals --------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signalled = signum  # nothing else: the step boundary does the work

    def _on_sigterm_after_requeue(self, signum: int, frame: Any) -> None:
        self.sigterm_after_requeue = True

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or threading.current_thread() is not threading.main_thread():
            return
        for name in self.signals:
            signum = signal.Signals[name]
            self._previous[signum] = signal.signal(signum, self._on_signal)
        if _early_signal:
            self.signalled = _early_signal[-1]
            _early_signal.clear()
        self._next_agreement, self._interval, self._last_agreement = None, 1, None  # a (re)start agrees first
        cadence = (
            f"every {self.agree_every_n_steps} steps"
            if self.agree_every_n_steps is not None
            else f"about every {self.agree_every_s:g} s"
        )
        log.info(
            "pacofr preemption: %s -> checkpoint at a step boundary (several processes agree on it %s), then requeue",
            ", ".join(self.signals),
            cadence,
        )

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    # --- step boundary --------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step == self._step_at_batch_start:
            return  # gradient accumulation: not a step boundary yet
        if not _distributed():
            if self.signalled is not None:  # one process: its own flag decides, no collective, no device read
                self._checkpoint_and_leave(trainer)
            return
        step = trainer.global_step
        if not self._agreement_due(step):
            return
        if self._agree(step, trainer.strategy.root_device):
            self._checkpoint_and_leave(trainer)

    def _agreement_due(self, step: int) -> bool:
        if self.agree_every_n_steps is not None:
            return step % self.agree_every_n_steps == 0
        return self._next_agreement is None or step >= self._next_agreement

    def _agree(self, step: int, device: torch.device) -> bool:
        """All ranks at the same step: whether any got the signal (MAX of the flags); and, to schedule the next
        agreement, the slowest rank's seconds per step since the last one (MAX as well)."""
        seconds_per_step = 0.0  # unknown before the second agreement
        if self._last_agreement is not None and step > self._last_agreement[0]:
            seconds_per_step = (time.monotonic() - self._last_agreement[1]) / (step - self._last_agreement[0])
        stop, slowest = _all_reduce_max([float(self.signalled is not None), seconds_per_step], device)
        self._last_agreement = (step, time.monotonic())  # after the read: the device has caught up
        if slowest > 0:
            fits = max(1, min(self.MAX_INTERVAL, int(self.agree_every_s / slowest)))
            self._interval = min(2 * self._interval, fits)  # grow gently, shrink at once
        self._next_agreement = step + self._interval
        return stop > 0

    def checkpoint_path(self, trainer: L.Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath) / PREEMPT_NAME
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath:
                return Path(callback.dirpath) / PREEMPT_NAME
        return Path(trainer.default_root_dir) / "checkpoints" / PREEMPT_NAME

    def _checkpoint_and_leave(self, trainer: L.Trainer) -> None:
        step = trainer.global_step
        path = self.checkpoint_path(trainer)
        what = signal.Signals(self.signalled).name if self.signalled is not None else "another rank's signal"
        log.warning("pacofr preemption: %s; writing %s at global step %d", what, path, step)
        started = time.monotonic()
        trainer.save_checkpoint(path, weights_only=False)  # every rank: FSDP shards and RNG states need all
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint):
                callback._last_global_step_saved = step  # the step is saved: no second write on the way out
        for logger in trainer.loggers:
            logger.save()
            flush = getattr(getattr(logger, "experiment", None), "flush", None)
            if trainer.is_global_zero and callable(flush):
                flush()
        # `scontrol requeue` makes SLURM send SIGTERM to every task: note it, finish leaving on our own
        signal.signal(signal.SIGTERM, self._on_sigterm_after_requeue)
        trainer.strategy.barrier("pacofr-preempt-saved")
        seconds = time.monotonic() - started
        job_id = os.environ.get("SLURM_JOB_ID")
        requeued = 0
        if trainer.is_global_zero:
            if not self.requeue:
                log.warning("pacofr preemption: requeue disabled; resume with --resume auto")
            elif job_id is None:
                log.warning("pacofr preemption: not a SLURM job, nothing to requeue; resume with --resume auto")
            else:
                ok, message = requeue_slurm_job(job_id)
                requeued = int(ok)
                (log.warning if ok else log.error)("pacofr preemption: %s", message)
        requeued = int(_all_reduce_max([float(requeued)], trainer.strategy.root_device)[0])
        trainer.strategy.barrier("pacofr-preempt-requeued")
        code = EXIT_REQUEUED if requeued else EXIT_PREEMPTED
        if trainer.is_global_zero:
            # one greppable line for logs and tests
            print(
                f"pacofr: PREEMPTED at global_step={step} checkpoint={path} save_s={seconds:.2f} "
                f"requeued={'yes' if requeued else 'no'} exit={code}",
                flush=True,
            )
        if requeued:
            # SLURM is already ending this step (SIGTERM, then SIGKILL after KillWait). The checkpoint is on disk
            # (fsynced) and the logs are flushed: leave now, so the kill never lands halfway through Python's
            # teardown and the step's exit code is ours.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        raise Preempted(code)


class PreemptionDrill(L.Callback):
    """Sends this process a preemption signal after global step ``at_step`` (on ``rank`` only), to rehearse
    preemption without a scheduler: the real handler, agreement, checkpoint and exit path all run."""

    def __init__(self, at_step: int, signal_name: str = "SIGUSR1", rank: int = 0) -> None:
        self.at_step = at_step
        self.signal_name = signal_name
        self.rank = rank
        self._sent = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if not self._sent and trainer.global_step >= self.at_step and trainer.global_rank == self.rank:
            self._sent = True
            os.kill(os.getpid(), signal.Signals[self.signal_name])
