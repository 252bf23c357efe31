"""Names and modules as the unwrapped model gives them, whatever wrapper (FSDP, activation checkpointing) holds it.

Optimiser groups, weight-decay rules and checkpoints name parameters; under FSDP ``named_parameters()`` adds
wrapper prefixes, and these names must not depend on how a run was sharded.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel

# Prefixes torch's FSDP and activation-checkpoint wrappers insert in parameter names (torch.distributed.fsdp
# ._common_utils.FSDP_WRAPPED_MODULE and torch.distributed.algorithms._checkpoint.checkpoint_wrapper).
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def original_param_name(name: str) -> str:
    """A parameter's name as the unwrapped module gives it (``named_parameters()`` under FSDP adds prefixes)."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def unwrap_fsdp(module: nn.Module) -> nn.Module:
    """The module inside an FSDP unit (or the module itself). Attributes *set* on a wrapper stay on the wrapper
    (reads fall through to the inner module), so host-side state must be written on the inner module."""
    return module.module if isinstance(module, FullyShardedDataParallel) else module


def local_shard(tensor: torch.Tensor) -> torch.Tensor:
    """What this rank holds of a tensor: an FSDP2 DTensor's local shard (differentiable), else the tensor itself.
    Outside a unit's forward FSDP2 parameters are sharded DTensors; code that updates or touches them there works
    on the local shard (shards of equal shapes line up element for element)."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor
