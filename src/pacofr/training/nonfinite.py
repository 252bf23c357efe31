"""A non-finite loss or non-finite gradients are decided on all ranks together: every rank skips the same
step, intermittent skips are warned about (at most once a minute), and the run stops with a clear message
after ``max_in_row`` such steps in a row (FSFM hangs DDP when one rank skips alone). The training module
decides the loss in ``training_step`` and the gradients (their norm, which is non-finite when any gradient
is) before the optimiser step, and counts the step once with both (:meth:`NonFiniteGuard.record`).

Two ways to skip, chosen by the optimiser:

* **on the device** (fused AdamW/Adam, the module's default on CUDA and CPU): the all-reduced flag never
  reaches the host. The step runs as usual (backward of a non-finite loss, clipping); the optimiser is
  handed ``found_inf`` (the attribute ``torch.amp.GradScaler`` uses), so its fused kernel leaves
  parameters, moments and the step count untouched; the objective's between-step updates (e.g. PaCo-FR's code
  bookkeeping, EMA targets) are gated with the same flag. The in-row counter lives on the device too and reaches
  the host through a non-blocking copy (:class:`LaggedHostReader`) that is read ``lag_steps`` steps later (2 on
  CUDA): the
  run stops that many steps after the ``max_in_row``-th non-finite step in a row, on every rank at the same
  step (all ranks read the same step's count, so none is left waiting in a collective). The steps in
  between are decided as usual (skipped while still non-finite). On CPU the copy is synchronous: no lag,
  the run stops at the ``max_in_row``-th. Under gradient accumulation one non-finite micro-batch skips the
  whole optimiser step (its gradients are in the sum). With ``16-mixed`` precision ``GradScaler`` sets
  ``found_inf`` itself, from the gradients, which a non-finite loss makes non-finite: skipped as well.
* **on the host** (any other optimiser, e.g. foreach/for-loop AdamW, whose ``step`` rejects ``found_inf``):
  one blocking read of the flag per step, and ``training_step`` returns None so Lightning skips the
  step. Correct, but one host-device sync per step.
"""

from __future__ import annotations

import logging
import time

import torch
import torch.distributed as dist

from pacofr.training.host_copies import LaggedHostReader

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised on every rank when the loss has been non-finite for too many steps in a row."""


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_ranks_finite_flag(loss: torch.Tensor) -> torch.Tensor:
    """A float32 scalar on the loss's device: 1 when the loss is finite on every rank, else 0.

    One all-reduce (MIN) of a single flag; no host sync (NCCL queues it on the device)."""
    flag = torch.isfinite(loss.detach()).all().to(torch.float32).reshape(1)
    if _distributed():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return flag.reshape(())


def all_ranks_finite(loss: torch.Tensor) -> bool:
    """True when the loss is finite on every rank (one all-reduce, then a blocking read)."""
    return bool(all_ranks_finite_flag(loss).item())


def skips_on_device(optimizer: torch.optim.Optimizer | None) -> bool:
    """Whether ``optimizer.step()`` honours ``optimizer.found_inf`` (torch's fused Adam/AdamW do; the
    foreach and for-loop implementations raise on it)."""
    if optimizer is None or not getattr(optimizer, "_step_supports_amp_scaling", False):
        return False
    return all(group.get("fused", False) for group in optimizer.param_groups)


class NonFiniteGuard:
    """Counts non-finite steps (in a row, and in total) on the device; raises after ``max_in_row`` in a row.

    ``observe`` is the sync-free path (returns the device flag); ``check`` the host path (returns a bool).
    ``in_row`` / ``total`` read (and set) the counters as ints: a blocking read, for checkpoints and tests.
    Counted per ``observe``/``check`` call, i.e. per micro-batch under gradient accumulation.
    """

    def __init__(self, max_in_row: int = 10, lag_steps: int = 2):
        """``lag_steps``: on CUDA, the host reads the in-row count of ``lag_steps`` steps ago (the device
        has usually finished it, so the read does not wait); 0 where copies are synchronous (CPU)."""
        self.max_in_row = max_in_row
        self.lag_steps = lag_steps
        self.warn_every_s = 60.0
        self._warned_total, self._warned_at = 0, None
        self._counts = torch.zeros(2, dtype=torch.long)  # [in a row, total], moved to the loss's device on use
        self._reader = LaggedHostReader(keep=lag_steps + 1)

    # --- host views (blocking; checkpoints, tests) ---------------------------------------------------
    @property
    def in_row(self) -> int:
        return int(self._counts[0])

    @in_row.setter
    def in_row(self, value: int) -> None:
        self._counts[0] = int(value)
        self._reader = LaggedHostReader(keep=self.lag_steps + 1)  # copies in flight predate the new value

    @property
    def total(self) -> int:
        return int(self._counts[1])

    @total.setter
    def total(self, value: int) -> None:
        self._counts[1] = int(value)
        self._reader = LaggedHostReader(keep=self.lag_steps + 1)

    @property
    def total_tensor(self) -> torch.Tensor:
        """Non-finite steps so far, on the device (for logging without a sync)."""
        return self._counts[1]

    # --- per step ------------------------------------------------------------------------------------
    def observe(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        """Decide this step on all ranks without a host sync: returns the float32 device flag (1 = finite
        everywhere, take the step), updates the counters on the device, and raises ``NonFiniteLossError``
        once the in-row count read on the host (``lag_steps`` old on CUDA, see the module doc) reaches
        ``max_in_row``."""
        return self.record(all_ranks_finite_flag(loss), step)

    def record(self, finite: torch.Tensor, step: int) -> torch.Tensor:
        """Count one step whose all-ranks decision is the device flag ``finite`` (1 = taken): the loss and the
        gradients, as the training module decides it. Returns the flag; raises like :meth:`observe`."""
        if self._counts.device != finite.device:
            self._counts = self._counts.to(finite.device)
        bad = (finite == 0).long()
        # in a row: reset by a finite step, else +1; total: +1 per non-finite step
        self._counts.copy_(torch.stack([(self._counts[0] + 1) * bad, self._counts[1] + bad]))
        self._reader.push(self._counts, step)
        self.raise_if_exhausted()
        return finite

    def check(self, loss: torch.Tensor, step: int) -> bool:
        """Host path: True when the step may be taken (one blocking read per call, and no lag)."""
        finite = bool(self.observe(loss, step).item())
        self.raise_if_exhausted(lag=0)  # the blocking read above has landed this step's copy as well
        return finite

    def raise_if_exhausted(self, lag: int | None = None) -> None:
        """Raise when the in-row count of ``lag`` steps ago (default: ``lag_steps`` on CUDA, 0 on CPU) has
        reached ``max_in_row``."""
        if lag is None:
            lag = self.lag_steps if self._counts.is_cuda else 0
        landed = self._reader.lagged(lag)
        if landed is None:
            return
        counts, step = landed
        in_row, total = (int(v) for v in counts.numpy())  # a host copy: read through numpy, no device sync
        if in_row >= self.max_in_row:
            raise NonFiniteLossError(
                f"loss or gradients were non-finite on at least one rank for {in_row} steps in a row (last at step "
                f"{step}); stopping. Lower the learning rate, check the data, or raise max_nonfinite_steps."
            )
        self._warn_if_new(total, step)

    def _warn_if_new(self, total: int, step: int) -> None:
        """Intermittent skips are said, not only counted: a warning when the total has grown, at most once per
        ``warn_every_s`` seconds (the count is in each message, so none is lost)."""
        if total <= self._warned_total:
            return
        now = time.monotonic()
        if self._warned_at is not None and now - self._warned_at < self.warn_every_s:
            return
        self._warned_total, self._warned_at = total, now
        log.warning(
            "pacofr: %d step(s) skipped so far for a non-finite loss or gradients on some rank (known at step %d); "
            "training goes on. Many of them mean a too high learning rate or bad data.",
            total,
            step,
        )
