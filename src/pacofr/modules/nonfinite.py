"""A non-finite loss is decided on all ranks together: every rank skips the same step, and the run
stops with a clear message after ``max_in_row`` such steps in a row (FSFM hangs DDP when one rank
skips alone)."""

from __future__ import annotations

import torch
import torch.distributed as dist


class NonFiniteLossError(RuntimeError):
    """Raised on every rank when the loss has been non-finite for too many steps in a row."""


def all_ranks_finite(loss: torch.Tensor) -> bool:
    """True when the loss is finite on every rank (one all-reduce of a single flag)."""
    flag = torch.isfinite(loss.detach()).all().to(torch.float32).reshape(1)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


class NonFiniteGuard:
    """Counts consecutive non-finite steps; ``check`` returns whether to take the step."""

    def __init__(self, max_in_row: int = 10):
        self.max_in_row = max_in_row
        self.in_row = 0
        self.total = 0

    def check(self, loss: torch.Tensor, step: int) -> bool:
        if all_ranks_finite(loss):
            self.in_row = 0
            return True
        self.in_row += 1
        self.total += 1
        if self.in_row >= self.max_in_row:
            raise NonFiniteLossError(
                f"loss was non-finite on at least one rank for {self.in_row} steps in a row (last at step {step}); "
                "stopping. Lower the learning rate, check the data, or raise max_nonfinite_steps."
            )
        return False
