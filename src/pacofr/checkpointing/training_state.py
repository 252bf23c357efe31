"""What a pretraining checkpoint carries beside the weights and the optimiser, and its restoration: the optimiser
groups' parameter names (Adam's state is mapped by name on resume, DDP <-> FSDP), the non-finite counters (the
run of skipped steps continues across a resume), the encoder's description (for ``pacofr eval`` / ``export``)
and the objective's host-side state; checkpoints of the pre-objective layout are mapped first."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from pacofr.checkpointing import legacy_keys, optim_keys
from pacofr.models.unwrap import original_param_name
from pacofr.objectives.interface import PretrainObjective

NONFINITE_KEY = "pacofr_nonfinite"


def save_training_state(
    checkpoint: dict[str, Any],
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
    optimizers: list[torch.optim.Optimizer],
    nonfinite_counts: dict[str, int],
    objective: PretrainObjective,
) -> None:
    if optimizers:
        name_of = {id(p): original_param_name(n) for n, p in named_parameters}
        optim_keys.record_names(checkpoint, optimizers, name_of)
    checkpoint[NONFINITE_KEY] = dict(nonfinite_counts)
    checkpoint[legacy_keys.ENCODER_SPEC_KEY] = objective.encoder_spec()
    checkpoint.update(objective.host_state())


def load_training_state(
    checkpoint: dict[str, Any], current_groups: list[tuple[str, list[str]]] | None, objective: PretrainObjective
) -> dict[str, int] | None:
    """Map an old layout, re-key a plain optimiser's state onto ``current_groups`` ((tag, names) in optimiser
    order; None under FSDP, whose strategy restores its optimiser itself), restore the objective's host state;
    returns the non-finite counters (None in checkpoints without them)."""
    legacy_keys.upgrade_checkpoint(checkpoint)
    if checkpoint.get("optimizer_states") and current_groups is not None:
        optim_keys.to_current_groups(checkpoint, current_groups)
    objective.load_host_state(checkpoint)
    return checkpoint.get(NONFINITE_KEY)
