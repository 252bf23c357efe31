"""Running module code outside the training step when the model may be sharded by FSDP.

Between steps, an FSDP-sharded parameter holds only this rank's slice, so monitors that run the model on their
own (image grids, the online probe) must go through the FSDP root's ``forward``, which gathers the parameters.
That gather is a collective: under FSDP such code runs on *every* rank (each rank computes; rank 0 writes).
This is Lightning's own trick for ``training_step`` (``_ForwardRedirection``), applied to any callable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def fsdp_replicates_all(trainer: L.Trainer) -> bool:
    """True when FSDP keeps every parameter whole on every rank (``NO_SHARD``): gradients are whole too."""
    from torch.distributed.fsdp import ShardingStrategy

    return is_fsdp(trainer) and getattr(trainer.strategy, "sharding_strategy", None) == ShardingStrategy.NO_SHARD


@contextmanager
def momentum_params_whole(trainer: L.Trainer | None, needed: bool) -> Iterator[None]:
    """Inside: every parameter of an objective's momentum pairs can be updated in place against its partner.

    Under FSDP (``use_orig_params``) a parameter outside the forward is a view of this rank's shard of its unit.
    Online and target blocks are units of identical layout, so their shards match element for element; what
    sits in the root unit (embeddings, class token, final norm, heads) is sharded as part of one flat parameter,
    where online and target slices do not line up. The root's parameters are therefore gathered in full
    precision (``summon_full_params``, root only, written back); the blocks stay sharded. Every rank must enter.
    """
    if not needed or trainer is None or not is_fsdp(trainer):
        yield
        return
    from torch.distributed.fsdp import FullyShardedDataParallel

    with FullyShardedDataParallel.summon_full_params(trainer.strategy.model, recurse=False, writeback=True):
        yield
