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

T = TypeVar("T")


def is_fsdp(trainer: L.Trainer) -> bool:
    """True when the trainer trains with torch FSDP: its strategy is Lightning's FSDP one (also before it has
    wrapped the model, e.g. in ``configure_model``), or its model is already an FSDP unit."""
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import FullyShardedDataParallel

    strategy = trainer.strategy
    return isinstance(strategy, FSDPStrategy) or isinstance(getattr(strategy, "model", None), FullyShardedDataParallel)


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
