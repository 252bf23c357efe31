"""The training step, once: what ``PretrainModule`` runs through Lightning's hooks and what a loop without
Lightning (``bench/train_step.py``) runs as :func:`train_step`, from the same functions in the same order.

1. the objective's forward and loss, and its all-ranks finite flag (on the device, no host read);
2. backward;
3. before the optimiser step: AdamW's step counters of the groups that waited restart when the incubation ends
   (:func:`restart_after_incubation`); the gradient norm of every schedule group (:func:`group_grad_norms`); the
   step's decision (loss and gradients finite on every rank), handed to the fused AdamW as ``found_inf``; each
   group clipped by its own norm at its own limit (:func:`group_clip_limits`);
4. the optimiser step and the learning-rate schedules (one per group, :func:`build_optimizer`);
5. after it: the objective's state updates gated by the decision, and the optimiser moments of re-seeded rows
   reset (:func:`finish_step`).

Everything here reads what the objective declares (``pacofr.objectives.interface``) and never names a method.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from pacofr.models.unwrap import original_param_name
from pacofr.objectives.interface import PretrainObjective, StepOutput
from pacofr.optim import build_adamw, pretrain_schedules
from pacofr.training.group_gradients import clip_groups, group_grad_norms
from pacofr.training.nonfinite import NonFiniteGuard, all_ranks_finite_flag
from pacofr.training.optimizer_resets import reset_rows, restart_group_steps


def build_optimizer(
    objective: PretrainObjective,
    groups: list[dict],
    *,
    lr: float,
    betas: tuple[float, float],
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float,
) -> tuple[torch.optim.Optimizer, LambdaLR]:
    """AdamW over ``groups`` (the objective's ``named_param_groups``, ``names`` removed), each group at ``lr`` x its
    ``lr_scale``, and one ``LambdaLR`` multiplier per group from its declared schedule. Fused wherever torch has
    the kernel (CUDA, CPU): one kernel for all parameters, and the only AdamW that skips a non-finite step on the
    device (``found_inf``, see ``pacofr.training.nonfinite``) without a host sync."""
    specs = {spec.name: spec for spec in objective.parameter_groups()}
    for g in groups:
        g["lr"] = lr * specs[g["schedule"]].lr_scale
    fused = all(p.device.type in ("cuda", "cpu") for g in groups for p in g["params"])
    optimizer = build_adamw(groups, lr=lr, betas=betas, fused=fused)
    lambdas = pretrain_schedules(
        [specs[g["schedule"]] for g in groups], warmup_steps, total_steps, min_lr_ratio, objective.incubation_steps
    )
    return optimizer, LambdaLR(optimizer, lambdas)


def group_clip_limits(objective: PretrainObjective, max_norm: float | None) -> dict[str, float | None]:
    """Each schedule group's gradient-norm limit: its declared ``clip``, else ``max_norm`` (None: not clipped)."""
    return {spec.name: spec.clip if spec.clip is not None else max_norm for spec in objective.parameter_groups()}


def restart_after_incubation(objective: PretrainObjective, optimizer: torch.optim.Optimizer, step: int) -> None:
    """At the step the incubation ends, the groups that waited start with fresh AdamW step counters (a fresh
    AdamW's bias correction, not that of one that counted the idle steps)."""
    if 0 < objective.incubation_steps == step:
        for spec in objective.parameter_groups():
            if spec.after_incubation:
                restart_group_steps(optimizer, spec.name)


def device_decision(
    optimizer: torch.optim.Optimizer,
    loss_finite: torch.Tensor,
    grads_finite: torch.Tensor | None,
    guard: NonFiniteGuard,
    step: int,
) -> torch.Tensor:
    """The step's decision on the device (1 = take it): loss and gradients finite on every rank. Counted by
    ``guard`` and handed to the fused AdamW as ``found_inf``, which skips the update without a host sync."""
    take = loss_finite if grads_finite is None else loss_finite * grads_finite
    guard.record(take, step)
    optimizer.found_inf = 1.0 - take
    return take


def clear_decision(optimizer: torch.optim.Optimizer) -> None:
    """``found_inf`` is used up by the step: a later ``step()`` outside training must not see it."""
    optimizer.__dict__.pop("found_inf", None)


def finish_step(
    objective: PretrainObjective,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, torch.Tensor] | None,
    step: int,
    apply: torch.Tensor | None,
    params_whole: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> None:
    """After the optimiser step: the objective's ``after_step`` (gated by ``apply``; inside ``params_whole``,
    which makes FSDP-sharded momentum pairs whole), then the optimiser moments of the rows it re-seeded reset."""
    with params_whole():
        objective.after_step(state, step, apply)
    rows = objective.take_reseeded_rows()
    if rows and optimizer is not None:
        params = {original_param_name(n): p for n, p in objective.named_parameters()}
        reset_rows(optimizer, params, rows)


def train_step(
    objective: PretrainObjective,
    optimizer: torch.optim.Optimizer,
    schedule: LambdaLR,
    batch: dict[str, torch.Tensor],
    step: int,
    *,
    guard: NonFiniteGuard,
    max_grad_norm: float | None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    replicated: Iterable[int] = (),
) -> StepOutput:
    """One whole training step without Lightning, on one process or under DDP-style replicated gradients: the
    order and the parts of ``PretrainModule``'s step (the device path of its non-finite decision)."""
    with autocast():
        result = objective(batch, step)
    loss_finite = all_ranks_finite_flag(result.total)
    state = objective.state_for_after_step(result.out)  # taken where the module takes it, before backward
    result.total.backward()
    restart_after_incubation(objective, optimizer, step)
    norms = group_grad_norms(optimizer, replicated)
    total_norm = torch.stack(list(norms.values())).square().sum().sqrt() if norms else None
    take = device_decision(
        optimizer, loss_finite, all_ranks_finite_flag(total_norm) if total_norm is not None else None, guard, step
    )
    clip_groups(optimizer, norms, group_clip_limits(objective, max_grad_norm))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    schedule.step()
    clear_decision(optimizer)
    finish_step(objective, optimizer, state, step, take)
    return result
