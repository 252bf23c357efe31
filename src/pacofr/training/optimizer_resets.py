"""AdamW state that must start afresh mid-run: a schedule group frozen until now, and re-seeded parameter rows.

- A group frozen by its schedule (lr 0, zero gradients: PaCo-FR's backbone during its incubation)
  keeps zero moments, but AdamW still counts its steps, so its bias correction is off when it starts: the first
  update is ~0.44x a fresh Adam's, then ~1.05-1.1x for tens of steps. Restarting the count when the group starts
  gives exactly a fresh Adam.
- A re-seeded row (e.g. a dead code of PaCo-FR and its Belief Predictor row) gets a new value; the moments its old
  value gathered would move it by a history it never had.

Both are device operations on the optimiser's state: no host read.
"""

from __future__ import annotations

import torch


def restart_group_steps(optimizer: torch.optim.Optimizer, schedule: str) -> int:
    """Zero the step count and moments of every parameter of the ``schedule`` groups that has state; returns how
    many parameters were reset."""
    reset = 0
    for group in optimizer.param_groups:
        if group.get("schedule") != schedule:
            continue
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state:
                continue
            for key in ("step", "exp_avg", "exp_avg_sq"):
                if key in state and torch.is_tensor(state[key]):
                    state[key].zero_()
                elif key == "step" and key in state:
                    state[key] = 0
            reset += 1
    return reset


def reset_rows(
    optimizer: torch.optim.Optimizer, params: dict[str, torch.nn.Parameter], rows: dict[str, torch.Tensor]
) -> None:
    """Zero the AdamW moments of the rows ``rows[name]`` ((rows,) bool on the device) of ``params[name]``."""
    for name, mask in rows.items():
        p = params.get(name)
        state = optimizer.state.get(p) if p is not None else None
        if not state:
            continue
        for key in ("exp_avg", "exp_avg_sq"):
            moment = state.get(key)
            if torch.is_tensor(moment) and moment.shape[:1] == mask.shape:
                keep = (~mask).reshape(-1, *([1] * (moment.ndim - 1))).to(moment.dtype)
                moment.mul_(keep)
