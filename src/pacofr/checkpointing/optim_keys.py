"""Optimiser state that survives a change of strategy (DDP <-> FSDP) and of parameter order.

``torch.optim`` keys its state by *position* in the optimiser's parameter groups; FSDP keys it by parameter
*name*; and the positions depend on how the groups were built (pacofr's groups run codebook/decay,
codebook/no_decay, main/decay, main/no_decay, which is not the model's order). Loading one layout as the other by
position silently gives a parameter another one's Adam moments (and a shape error only if the shapes differ).

So every pacofr checkpoint records the parameter *names* of each group in optimiser order
(``pacofr_optimizer_param_names``), and a load maps the saved state onto the current optimiser by name. A group
that gained or lost a parameter is an error that names them, never a silent mix-up.
"""

from __future__ import annotations

from typing import Any

NAMES_KEY = "pacofr_optimizer_param_names"  # [optimizer][group] -> list of parameter names, optimiser order


class OptimizerLayoutError(ValueError):
    """The checkpoint's optimiser state does not fit the optimiser being restored."""


def is_name_keyed(state: dict[str, Any]) -> bool:
    """True for FSDP's layout (parameters named), False for ``torch.optim``'s (parameters numbered)."""
    params = [p for g in state.get("param_groups", []) for p in g["params"]]
    return bool(params) and all(isinstance(p, str) for p in params)


def saved_group_names(state: dict[str, Any], recorded: list[list[str]] | None) -> list[list[str]] | None:
    """Names of each saved group's parameters in optimiser order: from the state itself when it is
    name-keyed, else the names the checkpoint recorded beside it (None for an old checkpoint without them)."""
    if is_name_keyed(state):
        return [list(g["params"]) for g in state["param_groups"]]
    if recorded is None:
        return None
    counts = [len(g["params"]) for g in state["param_groups"]]
    if counts != [len(names) for names in recorded]:
        raise OptimizerLayoutError(
            f"checkpoint records {[len(n) for n in recorded]} parameter names per group but its optimiser "
            f"state has {counts}: the checkpoint is inconsistent"
        )
    return [list(names) for names in recorded]


def group_tag(group: dict[str, Any], index: int) -> str:
    return str(group.get("group", f"#{index}"))


def to_positional(
    state: dict[str, Any], saved_names: list[list[str]], current: list[tuple[str, list[str]]]
) -> dict[str, Any]:
    """Saved optimiser state -> ``torch.optim`` layout for an optimiser whose groups are ``current``
    (``(tag, parameter names)`` per group, in optimiser order).

    Groups are matched by their ``group`` tag (pacofr's groups carry one; untagged groups match by index) and
    must hold the same set of parameters; each parameter's state follows its name. The saved groups'
    hyper-parameters are kept, as ``Optimizer.load_state_dict`` does.
    """
    saved_groups = state["param_groups"]
    if len(saved_groups) != len(current):
        raise OptimizerLayoutError(
            f"checkpoint optimiser has {len(saved_groups)} parameter groups "
            f"{[group_tag(g, i) for i, g in enumerate(saved_groups)]}, this run has {len(current)} "
            f"{[tag for tag, _ in current]}"
        )
    by_tag = {group_tag(g, i): (g, names) for i, (g, names) in enumerate(zip(saved_groups, saved_names))}
    all_saved = [name for names in saved_names for name in names]
    if len(set(all_saved)) != len(all_saved):
        raise OptimizerLayoutError("the checkpoint's optimiser state lists a parameter name twice")
    entries = state.get("state", {})
    members = {key for group in saved_groups for key in group["params"]}
    orphans = sorted(str(key) for key in entries if key not in members)
    if orphans:
        raise OptimizerLayoutError(
            f"the checkpoint's optimiser state has entries for parameters in no group: {orphans[:5]}"
        )
    by_name: dict[str, Any] = {}
    for group, names in zip(saved_groups, saved_names):
        for key, name in zip(group["params"], names):
            if key in entries:
                by_name[name] = entries[key]
    new_state: dict[int, Any] = {}
    new_groups = []
    start = 0
    for tag, names in current:
        if tag not in by_tag:
            raise OptimizerLayoutError(f"this run has parameter group {tag!r}, the checkpoint has {sorted(by_tag)}")
        saved_group, saved = by_tag[tag]
        if set(saved) != set(names):
            missing, extra = sorted(set(names) - set(saved)), sorted(set(saved) - set(names))
            raise OptimizerLayoutError(
                f"parameter group {tag!r} differs from the checkpoint's: not in the checkpoint {missing[:5]}, "
                f"only in the checkpoint {extra[:5]}"
            )
        for offset, name in enumerate(names):
            if name in by_name:
                new_state[start + offset] = by_name[name]
        new_groups.append({**saved_group, "params": list(range(start, start + len(names)))})
        start += len(names)
    return {"state": new_state, "param_groups": new_groups}


def to_name_keyed(state: dict[str, Any], saved_names: list[list[str]]) -> dict[str, Any]:
    """Saved optimiser state -> FSDP's layout (state and group members keyed by parameter name)."""
    if is_name_keyed(state):
        return state
    entries = state.get("state", {})
    new_state, new_groups = {}, []
    for group, names in zip(state["param_groups"], saved_names):
        for key, name in zip(group["params"], names):
            if key in entries:
                new_state[name] = entries[key]
        new_groups.append({**group, "params": list(names)})
    return {"state": new_state, "param_groups": new_groups}


def record_names(checkpoint: dict[str, Any], optimizers: list[Any], name_of: dict[int, str]) -> None:
    """Write each optimiser group's parameter names, in optimiser order, into ``checkpoint`` (``name_of``: the
    parameters' ids to their unwrapped names)."""
    checkpoint[NAMES_KEY] = [[[name_of[id(p)] for p in g["params"]] for g in opt.param_groups] for opt in optimizers]


def to_current_groups(checkpoint: dict[str, Any], current: list[tuple[str, list[str]]]) -> None:
    """Re-key, in place, every saved optimiser state of ``checkpoint`` by name onto a plain optimiser whose groups
    are ``current`` ((tag, parameter names) in optimiser order); old files without recorded names are left as
    they are (Lightning loads them by position)."""
    recorded = checkpoint.get(NAMES_KEY) or []
    states = checkpoint.get("optimizer_states") or []
    for i, state in enumerate(states):
        saved = saved_group_names(state, recorded[i] if i < len(recorded) else None)
        if saved is not None:
            states[i] = to_positional(state, saved, current)


def name_keyed_states(checkpoint: dict[str, Any], states: list[dict[str, Any]], optimizers: int, path: Any) -> list:
    """The checkpoint's optimiser ``states`` keyed by parameter name (the layout the FSDP presets load), one per
    optimiser of the run; a count mismatch or a position-keyed state without recorded names is refused."""
    if len(states) != optimizers:
        raise RuntimeError(f"checkpoint has {len(states)} optimiser states, this run {optimizers}")
    recorded = checkpoint.get(NAMES_KEY) or []
    named = []
    for i, state in enumerate(states):
        saved = saved_group_names(state, recorded[i] if i < len(recorded) else None)
        if saved is None:
            raise OptimizerLayoutError(
                f"{path}: position-keyed optimiser state without recorded parameter names (a checkpoint from before "
                "pacofr recorded them): FSDP cannot tell which state is whose. Resume it once with the DDP preset, "
                "whose checkpoints record the names."
            )
        named.append(to_name_keyed(state, saved))
    return named
