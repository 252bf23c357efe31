"""The MAE optimisation recipe: AdamW parameter groups, batch-scaled learning rate, warmup + cosine."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

import torch
from torch import nn


def scaled_lr(base_lr: float, global_batch: int, reference_batch: int = 256) -> float:
    """MAE's linear scaling rule: ``lr = base_lr * global_batch / 256``."""
    return base_lr * global_batch / reference_batch


def param_groups(
    named_params: Iterable[tuple[str, nn.Parameter]],
    weight_decay: float,
    no_decay_names: Iterable[str] = (),
    ndim: Mapping[str, int] | None = None,
) -> list[dict]:
    """Two AdamW groups: decayed weights, and everything that must not decay.

    No decay for norms and biases (every parameter with ndim <= 1), for the names the model lists in
    ``no_weight_decay()`` (position embeddings, class/mask tokens, a method's embeddings) matched as suffixes of
    the full parameter name, so a name given by a sub-module matches below its prefix. Every parameter
    is included, even one idle for now (incubation): AdamW skips parameters whose grad is None.
    ``ndim`` maps names to the parameters' dimensions as built, for wrappers (FSDP) that flatten them.
    """
    skip = tuple(no_decay_names)
    decay, no_decay = [], []
    for name, param in named_params:
        if not param.requires_grad:
            continue
        dims = ndim[name] if ndim is not None else param.ndim
        if dims <= 1 or any(name == s or name.endswith("." + s) for s in skip):
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "group": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "group": "no_decay"},
    ]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr at ``step``: linear warmup from ~0, then half a cosine to ``min_lr_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_adamw(groups: list[dict], lr: float, betas: tuple[float, float], fused: bool | None = None):
    """AdamW, fused on CUDA (one kernel for all parameters) unless told otherwise."""
    if fused is None:
        fused = torch.cuda.is_available() and all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=bool(fused))


class GroupSchedule(Protocol):
    """What a learning-rate schedule reads of a parameter group (``pacofr.objectives.ParamGroup``)."""

    warmup_steps: int | None
    after_incubation: bool


def group_schedule(
    warmup_steps: int, total_steps: int, min_lr_ratio: float, incubation_steps: int, after_incubation: bool
) -> Callable[[int], float]:
    """One group's ``LambdaLR`` multiplier: with ``after_incubation``, 0 through the incubation steps, then warmup
    and cosine over the rest of the run; without, warmup from step 0 and cosine over the whole run."""

    def waits(step: int) -> float:
        if step < incubation_steps:
            return 0.0
        return warmup_cosine(step - incubation_steps, warmup_steps, total_steps - incubation_steps, min_lr_ratio)

    def from_start(step: int) -> float:
        return warmup_cosine(step, warmup_steps, total_steps, min_lr_ratio)

    return waits if after_incubation else from_start


def pretrain_schedules(
    groups: Sequence[GroupSchedule],
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float,
    incubation_steps: int = 0,
) -> list[Callable[[int], float]]:
    """``LambdaLR`` multipliers, one per optimiser group from its declared schedule: its own ``warmup_steps``
    (None: ``warmup_steps``), and whether it waits for the incubation (:func:`group_schedule`)."""
    return [
        group_schedule(
            warmup_steps if g.warmup_steps is None else g.warmup_steps,
            total_steps,
            min_lr_ratio,
            incubation_steps,
            g.after_incubation,
        )
        for g in groups
    ]
