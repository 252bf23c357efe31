"""Running module code outside the training step when the model may be sharded by FSDP.

Between steps, an FSDP-sharded parameter holds only this rank's slice, so monitors that run the model on their
own (image grids, the online probe) must go through the FSDP root's ``forward``, which gathers the parameters.
That gather is a collective: under FSDP such code runs on *every* rank (each rank computes; rank 0 writes).
This is Lightning's own trick for ``training_step`` (``_ForwardRedirection``), applied to any callable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import lightning as L
from torch import nn

T = TypeVar("T")


def is_fsdp(trainer: L.Trainer) -> bool:
    """True when the trainer trains with torch FSDP: its strategy is Lightning's FSDP one (also before it has
    wrapped the model, e.g. in ``configure_model``), or its model is already an FSDP unit."""
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import FullyShardedDataParallel

    strategy = trainer.strategy
    return isinstance(strategy, FSDPStrategy) or isinstance(getattr(strategy, "model", None), FullyShardedDataParallel)


def unwrap_fsdp(module: nn.Module) -> nn.Module:
    """The module inside an FSDP unit (or the module itself). Attributes *set* on a wrapper stay on the wrapper
    (reads fall through to the inner module), so host-side state must be written on the inner module."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    return module.module if isinstance(module, FullyShardedDataParallel) else module


def call_unsharded(trainer: L.Trainer, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` with every parameter of the LightningModule available.

    Without FSDP this is a plain call. With FSDP, ``fn`` runs inside the root FSDP unit's forward (tensor
    arguments pass through it, as FSDP moves/casts forward inputs); every rank must make the same call.
    """
    if not is_fsdp(trainer):
        return fn(*args)
    wrapper, module = trainer.strategy.model, trainer.lightning_module
    original_forward = module.forward

    def redirected(*inner: Any) -> T:
        module.forward = original_forward  # fn may itself call the module's real forward
        return fn(*inner)

    module.forward = redirected
    try:
        return wrapper(*args)
    finally:
        module.forward = original_forward


# Prefixes torch's FSDP and activation-checkpoint wrappers insert in parameter names (torch.distributed.fsdp
# ._common_utils.FSDP_WRAPPED_MODULE and torch.distributed.algorithms._checkpoint.checkpoint_wrapper).
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def original_param_name(name: str) -> str:
    """A parameter's name as the unwrapped module gives it (``named_parameters()`` under FSDP adds prefixes)."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name
