"""Sharded (FSDP / torch.distributed.checkpoint) checkpoint folder -> one ordinary Lightning checkpoint file.

Lightning's FSDP strategy with ``state_dict_type="sharded"`` writes a folder: the model and optimiser
tensors as DCP shards (``*.distcp`` + ``.metadata``) and the rest (global step, loops, callbacks...) in
``meta.pt``; its ``ModelParallelStrategy`` (FSDP2: ``pacofr.strategies.fsdp2``, the ``fsdp`` preset) writes the
same layout with the weights under ``state_dict`` rather than ``model``. ``consolidate`` reads either on one
process, with no process group, through Lightning's own reader
(``lightning.fabric.utilities.load._load_distributed_checkpoint``, the code behind
``python -m lightning.pytorch.utilities.consolidate_checkpoint``) and writes a single file atomically.

The file's ``state_dict`` has the same keys as a DDP checkpoint. FSDP's optimiser state is keyed by parameter
name; by default it is re-keyed by position (the layout ``torch.optim`` and DDP checkpoints use), following
the order of the names in each parameter group, which is the optimiser's own order, and those names are
recorded beside it (``optim_keys.NAMES_KEY``), so a DDP resume maps each state to its parameter by name
whatever order its own groups have (FSDP -> DDP). ``optimizer_keys="names"`` keeps FSDP's layout.
``weights_only`` keeps only the weights (and step/hyper-parameters), e.g. for export or a fresh optimiser.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.load import _load_distributed_checkpoint
from lightning.pytorch.utilities.consolidate_checkpoint import _format_checkpoint

from pacofr.checkpointing import optim_keys
from pacofr.checkpointing.atomic_io import AtomicCheckpointIO
from pacofr.checkpointing.resolve import DCP_METADATA, CheckpointUnreadable


def load_sharded_checkpoint(sharded_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """A Lightning sharded checkpoint folder as one in-memory Lightning checkpoint dict."""
    sharded_dir = Path(sharded_dir)
    if not sharded_dir.is_dir():
        raise CheckpointUnreadable(f"{sharded_dir}: not a folder (a sharded checkpoint is a folder of shards)")
    if not (sharded_dir / DCP_METADATA).is_file():
        raise CheckpointUnreadable(f"{sharded_dir}: no {DCP_METADATA}: not a complete torch.distributed.checkpoint")
    checkpoint = _load_distributed_checkpoint(sharded_dir)
    if "model" not in checkpoint and "state_dict" in checkpoint:  # ModelParallelStrategy's (FSDP2) folder
        checkpoint["model"] = checkpoint.pop("state_dict")
    return _format_checkpoint(checkpoint)


def positional_optimizer_state(state: dict[str, Any]) -> dict[str, Any]:
    """An optimiser state dict keyed by parameter name (FSDP) -> keyed by position (``torch.optim`` layout).

    Positions run over the parameter groups in order, as ``Optimizer.state_dict()`` numbers them; a state
    that is already positional is returned unchanged.
    """
    names = optim_keys.saved_group_names(state, None)  # None: already positional
    if names is None:
        return state
    own_order = [(optim_keys.group_tag(g, i), n) for i, (g, n) in enumerate(zip(state["param_groups"], names))]
    return optim_keys.to_positional(state, names, own_order)


def consolidate(
    sharded_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    weights_only: bool = False,
    optimizer_keys: str = "positional",
) -> Path:
    """Write ``sharded_dir`` as the single file ``out`` (atomically). ``weights_only`` keeps only
    ``state_dict`` plus the global step and hyper-parameters; ``optimizer_keys``: ``positional`` (DDP, plain
    optimisers) or ``names`` (FSDP's layout). Returns ``out``."""
    if optimizer_keys not in ("positional", "names"):
        raise ValueError(f"optimizer_keys must be 'positional' or 'names', got {optimizer_keys!r}")
    checkpoint = load_sharded_checkpoint(sharded_dir)
    states = checkpoint.get("optimizer_states")
    if states and all(optim_keys.is_name_keyed(s) for s in states):
        # the names straight from FSDP's layout: the authority on which state is whose
        checkpoint[optim_keys.NAMES_KEY] = [[list(g["params"]) for g in s["param_groups"]] for s in states]
    if optimizer_keys == "positional" and states:
        checkpoint["optimizer_states"] = [positional_optimizer_state(s) for s in states]
    if weights_only:
        keep = ("state_dict", "global_step", "epoch", "hyper_parameters", "hparams_name", "pytorch-lightning_version")
        checkpoint = {k: v for k, v in checkpoint.items() if k in keep}
    out = Path(out)
    AtomicCheckpointIO().save_checkpoint(checkpoint, out)
    return out
