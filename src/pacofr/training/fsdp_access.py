"""Running module code outside the training step when the model may be sharded by FSDP (1 or 2).

Between steps, an FSDP-sharded parameter holds only this rank's slice, so monitors that run the model on their
own (image grids, the online probe) must gather the parameters first. That gather is a collective: under FSDP such
code runs on *every* rank (each rank computes; rank 0 writes). FSDP1: the call goes through the root unit's
``forward`` (Lightning's own trick for ``training_step``, ``_ForwardRedirection``, applied to any callable). FSDP2:
the root unit (the objective) is unsharded around the call; each block unit gathers its own in its forward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import lightning as L

T = TypeVar("T")


def is_fsdp(trainer: L.Trainer) -> bool:
    """True when the trainer trains with torch FSDP, 1 or 2: its strategy is Lightning's FSDP one or pacofr's FSDP2
    one (also before it has wrapped the model, e.g. in ``configure_model``), or its model is an FSDP1 unit."""
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import FullyShardedDataParallel

    strategy = trainer.strategy
    if is_fsdp2(trainer):
        return True
    return isinstance(strategy, FSDPStrategy) or isinstance(getattr(strategy, "model", None), FullyShardedDataParallel)


def is_fsdp2(trainer: L.Trainer) -> bool:
    """True when the trainer's strategy is pacofr's FSDP2 preset (``fully_shard``, parameters as DTensors)."""
    from pacofr.strategies.fsdp2 import FSDP2Strategy

    return isinstance(trainer.strategy, FSDP2Strategy)


def call_unsharded(trainer: L.Trainer, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` with every parameter of the LightningModule available.

    Without FSDP this is a plain call. With FSDP, ``fn`` runs inside the root FSDP unit's forward (tensor
    arguments pass through it, as FSDP moves/casts forward inputs); every rank must make the same call.
    """
    if not is_fsdp(trainer):
        return fn(*args)
    if is_fsdp2(trainer):
        root = trainer.lightning_module.objective
        root.unshard()  # the root's own parameters (patch and position embeddings, norms, heads) gathered
        try:
            # the training step's precision context: under bf16-mixed the blocks gather bf16 parameters and hand
            # bf16 activations on, which the root's fp32 layers take under autocast only
            with trainer.precision_plugin.forward_context():
                return fn(*args)
        finally:
            root.reshard()
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
    """True when FSDP1 keeps every parameter whole on every rank (``NO_SHARD``): gradients are whole too."""
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
    if not needed or trainer is None or not is_fsdp(trainer) or is_fsdp2(trainer):
        # FSDP2 shards parameter by parameter: online and target shards line up, the EMA runs on them as they are
        yield
        return
    from torch.distributed.fsdp import FullyShardedDataParallel

    with FullyShardedDataParallel.summon_full_params(trainer.strategy.model, recurse=False, writeback=True):
        yield
