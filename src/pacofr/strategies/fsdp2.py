"""FSDP2 (``torch.distributed.fsdp.fully_shard``): the ``fsdp`` preset (``configs/trainer/fsdp.yaml``).

Parameters are sharded one by one as DTensors (dim 0 over the data-parallel ranks), one FSDP unit per ViT block
(timm ``Block``) and the objective as the root unit: not the LightningModule, whose ``forward`` Lightning never
calls (it calls ``training_step``), so a root there would never gather its parameters. The rest follows what the
objective declares (``pacofr.objectives.interface``), never the type of a model part:

- ``replicated_modules()`` stay out of the sharding (``ignored_params``): plain tensors, whole on every rank, as
  under DDP. PaCo-FR's codebook rewrites codes and Belief Predictor rows between steps (dead-code re-seeding, EMA
  prototypes), outside any forward, where a sharded parameter would only be this rank's slice. Their gradients
  are averaged over every rank in fp32 before the group norms
  (``pacofr.training.group_gradients.reduce_replicated_grads``), which is what
  DDP's all-reduce gives them.
- ``fp32_modules()`` that are sharded become units with an fp32 policy (parameters, gradient reduction), whatever
  the run's precision. The blocks, under ``bf16-mixed``, gather their parameters in bf16 and reduce gradients in
  fp32 (``param_dtype: auto``); autocast stays on as under DDP, so the losses and the fp32 islands compute as
  they do there. ``param_dtype: fp32`` gathers fp32 (the numerics of DDP's autocast exactly, twice the traffic).
- Momentum pairs (FSFM's target network, PaCo-FR's affinity teacher) are sharded like their online modules:
  per-parameter shards of equal shapes line up element for element, so the EMA runs on the local shards.

``sharding: hybrid`` is HSDP on a 2-D mesh (``replicate`` x ``shard``): shard inside a node, replicate across
nodes (``num_nodes`` replicas; ``replicas`` overrides, e.g. to try it on one machine). ``compile_blocks`` compiles
each block before it is sharded (the compiled graph stays inside the unit, FSDP2's hooks around it).

Checkpoints are torch.distributed.checkpoint folders written atomically (:mod:`pacofr.strategies.atomic_save`),
resumable at another world size (DCP reshards on load), convertible to one file by ``pacofr checkpoint
consolidate``; a one-file checkpoint (DDP's, or consolidated) is resumed with its optimiser state keyed by the
parameter names pacofr records (``pacofr.checkpointing.optim_keys``), not by position.

On CPU processes over gloo (``configs/trainer/fsdp_cpu.yaml``) it is the same code, which is how the tests run it.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from lightning.fabric.utilities.load import _METADATA_FILENAME
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.trainer.states import TrainerFn
from timm.models.vision_transformer import Block
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from pacofr.checkpointing import legacy_keys, optim_keys
from pacofr.strategies.atomic_save import save_folder_atomically

FP32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)


@contextmanager
def _implicit_replication_off() -> Iterator[None]:
    """Inside ``implicit_replication()``, a region where DTensor refuses plain tensors again (torch's flag, which
    that context manager sets)."""
    from torch.distributed.tensor import DTensor

    dispatcher = DTensor._op_dispatcher
    before = dispatcher._allow_implicit_replication
    dispatcher._allow_implicit_replication = False
    try:
        yield
    finally:
        dispatcher._allow_implicit_replication = before


def replicate_plain_tensors_in_step(optimizer: torch.optim.Optimizer) -> None:
    """Let ``optimizer.step`` meet plain tensors beside DTensors: the parameters kept whole on every rank (and their
    gradients and moments), Adam's step counters, the fused AdamW's ``found_inf`` (the step's all-ranks decision,
    ``pacofr.training.nonfinite``). Every one of them is the same on every rank, which is what DTensor's
    ``implicit_replication`` assumes. Also for the steps torch.distributed.checkpoint takes itself (it initialises
    a fresh optimiser's state with a zero step before loading into it). The closure (forward and backward) runs
    strict: a plain tensor mixed with a sharded one there is a bug to see, not to paper over."""
    from torch.distributed.tensor.experimental import implicit_replication

    step = optimizer.step

    @functools.wraps(step)
    def replicating_step(closure: Any = None, **kwargs: Any) -> Any:
        def strict_closure() -> Any:
            with _implicit_replication_off():
                return closure()

        with implicit_replication():
            return step(closure=None if closure is None else strict_closure, **kwargs)

    optimizer.step = replicating_step


def replicated_parameters(objective: nn.Module) -> list[nn.Parameter]:
    """The parameters of the objective's ``replicated_modules()`` (kept whole on every rank), in model order."""
    seen: dict[int, nn.Parameter] = {}
    for name in getattr(objective, "replicated_modules", lambda: ())():
        for p in objective.get_submodule(name).parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())


def shard_objective(
    objective: nn.Module,
    mesh: DeviceMesh,
    block_policy: MixedPrecisionPolicy,
    compile_backend: str | None = None,
    activation_checkpointing: bool = False,
) -> None:
    """``fully_shard`` the objective in place: each ViT block, each declared fp32 module (fp32 policy), then the
    objective as root with its replicated modules left out. Children first, as FSDP2 requires."""
    replicated = set(getattr(objective, "replicated_modules", lambda: ())())
    fp32 = [n for n in getattr(objective, "fp32_modules", lambda: ())() if n not in replicated]
    whole = replicated_parameters(objective)
    kept_out = {id(p) for p in whole}
    in_fp32 = {id(m) for n in fp32 for m in objective.get_submodule(n).modules()}
    for module in list(objective.modules()):
        if not isinstance(module, Block) or any(id(p) in kept_out for p in module.parameters()):
            continue
        if activation_checkpointing:
            _checkpoint_block(module)
        if compile_backend is not None:
            module.compile(backend=compile_backend)
        fully_shard(module, mesh=mesh, mp_policy=FP32 if id(module) in in_fp32 else block_policy)
    for name in fp32:  # a declared fp32 module: its own unit (a block declared fp32 already is one)
        module = objective.get_submodule(name)
        if not isinstance(module, Block):
            fully_shard(module, mesh=mesh, mp_policy=FP32)
    fully_shard(objective, mesh=mesh, mp_policy=FP32, ignored_params=set(whole) or None)


def _checkpoint_block(block: nn.Module) -> None:
    """Recompute ``block``'s activations in backward (torch's non-reentrant checkpoint, run by the block's own
    forward so the module and its parameter names stay as they are)."""
    from torch.utils.checkpoint import checkpoint

    forward = block.forward

    def recomputed(*args: Any, **kwargs: Any) -> Any:
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    block.forward = recomputed


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 with one unit per ViT block, the objective as root, what it declares kept whole or in fp32.

    Args:
        sharding: ``full`` (ZeRO-3 over all ranks) or ``hybrid`` (HSDP: shard inside a node, replicate across nodes).
        replicas: HSDP replica count (default: ``num_nodes``); must divide the world size.
        state_dict_type: ``sharded`` (a DCP folder per checkpoint, each rank its shards; ``pacofr checkpoint
            consolidate`` makes one file) or ``full`` (rank 0 gathers one file).
        param_dtype: ``auto`` (blocks gather bf16 parameters under ``bf16-mixed``, else fp32) or ``fp32``.
        reshard_after_forward: free gathered block parameters after forward (ZeRO-3) or keep them for backward.
        compile_blocks: ``torch.compile`` each block before sharding it; ``compile_backend``: its backend.
        activation_checkpointing: recompute block activations in backward (less memory, ~30% more compute).
        timeout_minutes: collective timeout, so a dead rank takes the job down instead of hanging it.
    """

    def __init__(
        self,
        sharding: Literal["full", "hybrid"] = "full",
        replicas: int | None = None,
        state_dict_type: Literal["sharded", "full"] = "sharded",
        param_dtype: Literal["auto", "fp32"] = "auto",
        reshard_after_forward: bool = True,
        compile_blocks: bool = False,
        compile_backend: str = "inductor",
        activation_checkpointing: bool = False,
        timeout_minutes: float = 30.0,
        process_group_backend: str | None = None,
    ):
        if sharding not in ("full", "hybrid"):
            raise ValueError(f"sharding must be 'full' or 'hybrid', got {sharding!r}")
        if state_dict_type not in ("sharded", "full"):
            raise ValueError(f"state_dict_type must be 'sharded' or 'full', got {state_dict_type!r}")
        if param_dtype not in ("auto", "fp32"):
            raise ValueError(f"param_dtype must be 'auto' or 'fp32', got {param_dtype!r}")
        super().__init__(
            data_parallel_size="auto", tensor_parallel_size=1,
            save_distributed_checkpoint=state_dict_type == "sharded", process_group_backend=process_group_backend,
            timeout=timedelta(minutes=timeout_minutes),
        )  # fmt: skip
        self.sharding, self.replicas = sharding, replicas
        self.param_dtype, self.reshard_after_forward = param_dtype, reshard_after_forward
        self.compile_blocks, self.compile_backend = compile_blocks, compile_backend
        self.activation_checkpointing = activation_checkpointing
        self._state_dict_type = state_dict_type
        self._sharded = False

    # --- the mesh -----------------------------------------------------------------------------------------
    def setup_environment(self) -> None:
        self._setup_distributed()
        replicas = (self.replicas or self.num_nodes) if self.sharding == "hybrid" else 1
        if replicas < 1 or self.world_size % replicas:
            raise ValueError(f"HSDP: {replicas} replicas do not divide the world size {self.world_size}")
        device = self.root_device.type
        if replicas == 1:
            self._device_mesh = init_device_mesh(device, (self.world_size,), mesh_dim_names=("shard",))
        else:
            shape = (replicas, self.world_size // replicas)
            self._device_mesh = init_device_mesh(device, shape, mesh_dim_names=("replicate", "shard"))
        self.lightning_module._device_mesh = self._device_mesh

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        return {"num_replicas": self.world_size, "rank": self.global_rank}  # every rank reads its own data

    @property
    def shard_group(self) -> dist.ProcessGroup:
        """The group a parameter is sharded over (a node's ranks under HSDP): where gradient squares are summed."""
        return self.device_mesh["shard"].get_group()

    # --- sharding -----------------------------------------------------------------------------------------
    def setup(self, trainer: Any) -> None:
        # the objective returns (loss, terms, outputs), some of them views; nothing edits them in place, which is
        # what torch warns about at every step
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(.*\) returned a view tensor")
        if not self._sharded:
            module = self.lightning_module
            if not isinstance(getattr(module, "objective", None), nn.Module):
                raise TypeError("FSDP2Strategy shards pacofr's PretrainModule (its `objective`); got another module")
            bf16 = "bf16" in str(self.precision_plugin.precision)
            block_dtype = torch.bfloat16 if bf16 and self.param_dtype == "auto" else torch.float32
            policy = MixedPrecisionPolicy(param_dtype=block_dtype, reduce_dtype=torch.float32)
            mesh = self.device_mesh
            shard_objective(
                module.objective, mesh, policy, self.compile_backend if self.compile_blocks else None,
                self.activation_checkpointing,
            )  # fmt: skip
            for block in module.objective.modules():
                if isinstance(block, Block) and hasattr(block, "set_reshard_after_forward"):
                    block.set_reshard_after_forward(self.reshard_after_forward)
            self._sharded = True
        super().setup(trainer)

    def replicated_parameters(self) -> list[nn.Parameter]:
        return replicated_parameters(self.lightning_module.objective)

    # --- the optimiser step -------------------------------------------------------------------------------
    def setup_optimizers(self, trainer: Any) -> None:
        super().setup_optimizers(trainer)
        for optimizer in self.optimizers:
            replicate_plain_tensors_in_step(optimizer)

    # --- checkpoints --------------------------------------------------------------------------------------
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        if self._state_dict_type != "sharded":
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        save_folder_atomically(self, filepath, lambda partial: super(FSDP2Strategy, self).save_checkpoint(
            checkpoint, partial, storage_options))  # fmt: skip

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """A DCP folder (this preset's, at any world size) through Lightning; one file (DDP's, ``pacofr checkpoint
        consolidate``'s, this preset's ``full``) with the optimiser state keyed by the recorded parameter names."""
        path = Path(self.broadcast(str(checkpoint_path)))
        if path.is_dir():
            if not (path / _METADATA_FILENAME).is_file():
                raise FileNotFoundError(f"{path} is not a sharded checkpoint: no {_METADATA_FILENAME} in it")
            return super().load_checkpoint(path, weights_only)
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        checkpoint = torch.load(path, map_location="cpu", weights_only=bool(weights_only))
        legacy_keys.upgrade_checkpoint(checkpoint)  # the pre-objective layout: keys mapped before loading
        options = StateDictOptions(full_state_dict=True, strict=self.lightning_module.strict_loading)
        set_model_state_dict(self.model, checkpoint.pop("state_dict"), options=options)
        states = checkpoint.pop("optimizer_states", None)
        if states is None or self.lightning_module.trainer.state.fn != TrainerFn.FITTING:
            return checkpoint
        named = optim_keys.name_keyed_states(checkpoint, states, len(self.optimizers), path)
        for optimizer, state in zip(self.optimizers, named):
            set_optimizer_state_dict(self.model, optimizer, state, options=options)
        return checkpoint
