"""Checkpoints written before the objectives existed, read by the current layout.

Until the objective redesign the LightningModule held the model parts itself: ``model.encoder.*``,
``model.decoder.*``, ``model.codebook.*``, ``spatial_head.*``, ``affinity_proj.*``, ``teacher.*`` (and, in older
files still, a duplicate ``_forward.*`` copy). Now they live in the objective: ``objective.encoder.*``, ...,
``objective.spatial_head.*``. The weights and the optimiser moments are the same tensors; only the names moved,
so such a checkpoint resumes after its names are mapped here (state dict, the recorded optimiser names, and
name-keyed FSDP optimiser state). The checkpoint also gains the encoder's description, which older files kept
only in their hyper-parameters.
"""

from __future__ import annotations

from typing import Any

from pacofr.checkpointing.optim_keys import NAMES_KEY

ENCODER_SPEC_KEY = "pacofr_encoder"  # {"encoder_size", "img_size", "patch_size"}: what rebuilds the encoder
OBJECTIVE_PREFIX = "objective."
_OLD_MODEL_PREFIX = "model."
_OLD_TOP_LEVEL = ("spatial_head.", "affinity_proj.", "teacher.")
_DROPPED = ("_forward.",)  # a registered alias of ``model`` in older files: every weight a second time


def is_legacy(names: list[str] | Any) -> bool:
    """Whether parameter / state names follow the pre-objective layout."""
    return any(str(n).startswith((_OLD_MODEL_PREFIX, *_OLD_TOP_LEVEL)) for n in names)


def upgrade_name(name: str) -> str:
    """One pre-objective name in the current layout (other names unchanged)."""
    if name.startswith(_OLD_MODEL_PREFIX):
        return OBJECTIVE_PREFIX + name[len(_OLD_MODEL_PREFIX) :]
    if name.startswith(_OLD_TOP_LEVEL):
        return OBJECTIVE_PREFIX + name
    return name


def upgrade_state_dict(state_dict: dict[str, Any]) -> bool:
    """Map a pre-objective state dict onto the current names, in place; True when anything changed."""
    dropped = [k for k in state_dict if k.startswith(_DROPPED)]
    for key in dropped:
        del state_dict[key]
    if not is_legacy(state_dict):
        return bool(dropped)
    for key in list(state_dict):
        value = state_dict.pop(key)
        state_dict[upgrade_name(key)] = value
    return True


def _upgrade_optimizer_state(state: dict[str, Any]) -> None:
    """Name-keyed (FSDP) optimiser state: rename its parameters in the groups and in the state."""
    for group in state.get("param_groups", []):
        group["params"] = [upgrade_name(p) if isinstance(p, str) else p for p in group["params"]]
    per_param = state.get("state", {})
    for key in [k for k in per_param if isinstance(k, str)]:
        per_param[upgrade_name(key)] = per_param.pop(key)


def upgrade_checkpoint(checkpoint: dict[str, Any]) -> bool:
    """Map a pre-objective checkpoint onto the current layout, in place (a current one is left alone); True
    when anything changed."""
    changed = False
    if isinstance(checkpoint.get("state_dict"), dict):
        changed = upgrade_state_dict(checkpoint["state_dict"])
    recorded = checkpoint.get(NAMES_KEY)
    if recorded and is_legacy(n for opt in recorded for group in opt for n in group):
        checkpoint[NAMES_KEY] = [[[upgrade_name(n) for n in group] for group in opt] for opt in recorded]
        changed = True
    for state in checkpoint.get("optimizer_states") or []:
        if isinstance(state, dict):
            _upgrade_optimizer_state(state)
    hp = checkpoint.get("hyper_parameters") or {}
    if ENCODER_SPEC_KEY not in checkpoint and "encoder_size" in hp:
        checkpoint[ENCODER_SPEC_KEY] = {
            "encoder_size": hp["encoder_size"],
            "img_size": int(hp.get("img_size", 224)),
            "patch_size": int(hp.get("patch_size", 16)),
        }
        changed = True
    return changed
