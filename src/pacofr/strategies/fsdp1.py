"""FSDP1 (``FullyShardedDataParallel``), selectable for one more release (``configs/trainer/fsdp1.yaml``,
``fsdp1_cpu.yaml``); the ``fsdp`` preset is FSDP2 (:mod:`pacofr.strategies.fsdp2`). It says so in one line when it
starts.

DDP and FSDP are a config swap (``configs/trainer/ddp.yaml`` / ``fsdp1.yaml``) over the same module code.
FSDP wraps each transformer block (timm ``Block``) as its own unit, the usual policy for ViTs. The rest follows
what the objective declares (``pacofr.objectives.interface``), never the type of a model part:

- ``replicated_modules()`` become units of their own kept whole on every rank (``NO_SHARD``): PaCo-FR's candidate codes,
  whose bookkeeping (EMA prototypes, dead-code re-seeding) rewrites codes between steps, outside any forward,
  where a sharded parameter would only be this rank's slice;
- ``fp32_modules()`` become units with an fp32 mixed-precision policy (parameters, gradient reduction, buffers),
  whatever the run's precision: with ``bf16-mixed`` Lightning gives FSDP bf16 for all three, and the code usage
  buffers, turned bf16, refused the next in-place write (``index_copy_``) at the first optimiser step.

FSDP1 also runs on CPU processes over gloo (``configs/trainer/fsdp1_cpu.yaml``): torch's FSDP works there once it
is told the device explicitly, but Lightning passes ``device_id=None`` for CPU, which torch then rejects ("FSDP
needs a non-CPU accelerator device"); and Lightning's FSDP precision autocasts on CUDA only, so a ``bf16-mixed``
CPU run fed fp32 activations to bf16 parameters. Both are mended here: the CPU path emulates the GPU one (the
tests and the CPU SLURM variant exercise it).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.fabric.strategies.fsdp import (
    _get_full_state_dict_context,
    _move_torchmetrics_to_device,
    _setup_activation_checkpointing,
)
from lightning.fabric.strategies.model_parallel import _load_raw_module_state
from lightning.fabric.utilities.load import _lazy_load, _materialize_tensors
from lightning.pytorch.plugins.precision.fsdp import FSDPPrecision
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from timm.models.vision_transformer import Block
from torch import nn
from torch.distributed.fsdp import MixedPrecision, ShardingStrategy
from torch.distributed.fsdp.wrap import CustomPolicy

from pacofr.checkpointing import legacy_keys, optim_keys
from pacofr.strategies.atomic_save import save_folder_atomically

FSDP1_NOTICE = (
    "pacofr: FSDP1 (BlockFSDPStrategy, configs/trainer/fsdp1*.yaml) goes in the next release; the fsdp preset is "
    "FSDP2 (configs/trainer/fsdp.yaml); it resumes an FSDP1 checkpoint once `pacofr checkpoint consolidate` "
    "made it one file"
)
FP32_POLICY = MixedPrecision(param_dtype=torch.float32, reduce_dtype=torch.float32, buffer_dtype=torch.float32)


def declared_units(model: nn.Module) -> dict[int, dict[str, Any]]:
    """``{id(submodule): FSDP unit kwargs}`` for what the model's objective declares (replicated, fp32)."""
    objective = getattr(model, "objective", None)
    if objective is None:
        return {}
    units: dict[int, dict[str, Any]] = {}
    for name in objective.replicated_modules():
        # replicated over every rank: the world group, not the (intra, inter) pair a hybrid root hands down
        units.setdefault(id(objective.get_submodule(name)), {}).update(
            sharding_strategy=ShardingStrategy.NO_SHARD, process_group=torch.distributed.group.WORLD
        )
    for name in objective.fp32_modules():
        units.setdefault(id(objective.get_submodule(name)), {})["mixed_precision"] = FP32_POLICY
    return units


def wrap_policy_for(model: nn.Module) -> CustomPolicy:
    """FSDP unit per ViT block (sharded as configured), plus the objective's declared units."""
    units = declared_units(model)

    def policy(module: nn.Module) -> bool | dict:
        if id(module) in units:
            return dict(units[id(module)]) or True
        return isinstance(module, Block)

    return CustomPolicy(policy)


class DeviceAutocastFSDPPrecision(FSDPPrecision):
    """Lightning's FSDP precision with autocast on the root device's type (Lightning's is hard-coded to CUDA, so
    on CPU processes ``bf16-mixed`` ran bf16 parameters on fp32 activations without autocast)."""

    device_type: str = "cpu"

    def forward_context(self):
        if "mixed" in self.precision:
            dtype = torch.bfloat16 if self.precision == "bf16-mixed" else torch.float16
            return torch.autocast(self.device_type, dtype=dtype)
        return super().forward_context()


class BlockFSDPStrategy(FSDPStrategy):
    """FSDP with one wrap unit per transformer block.

    Args:
        sharding_strategy: ``FULL_SHARD`` (ZeRO-3 across all ranks) or ``SHARD_GRAD_OP`` (ZeRO-2) or
            ``HYBRID_SHARD`` (shard inside a node, replicate across nodes: less inter-node traffic). The node
            groups are built from the job's layout (``num_nodes`` x ``devices``), not left to torch, which
            takes the node size from the accelerators *this process* sees: 1 on CPU hosts and under
            ``--gpus-per-task=1``, so every process became a "node" and the gradients came out wrong.
        state_dict_type: ``sharded`` (each rank writes its shard: fast, needs ``pacofr checkpoint consolidate``
            for a single file) or ``full`` (rank 0 gathers one file).
        activation_checkpointing: recompute block activations in backward (less memory, ~30% more compute).
        timeout_minutes: collective timeout, so a dead rank takes the job down instead of hanging it.
    """

    def __init__(
        self,
        sharding_strategy: Literal["FULL_SHARD", "HYBRID_SHARD", "SHARD_GRAD_OP", "NO_SHARD"] = "FULL_SHARD",
        state_dict_type: Literal["full", "sharded"] = "sharded",
        activation_checkpointing: bool = False,
        timeout_minutes: float = 30.0,
        process_group_backend: str | None = None,
    ):
        super().__init__(
            auto_wrap_policy=CustomPolicy(lambda module: isinstance(module, Block)),  # completed in _setup_model
            activation_checkpointing_policy={Block} if activation_checkpointing else None,
            sharding_strategy=sharding_strategy,
            state_dict_type=state_dict_type,
            timeout=timedelta(minutes=timeout_minutes),
            process_group_backend=process_group_backend,
            use_orig_params=True,  # keeps per-parameter names, so AdamW groups (no decay on norms...) work
        )

    def setup_environment(self) -> None:
        super().setup_environment()
        rank_zero_info(FSDP1_NOTICE)

    def _hybrid_process_groups(self) -> tuple[Any, Any]:
        """(intra-node, inter-node) groups of this rank, from Lightning's rank layout (node-major)."""
        per_node, nodes = self.num_processes, self.num_nodes
        intra, _ = torch.distributed.new_subgroups_by_enumeration(
            [[node * per_node + i for i in range(per_node)] for node in range(nodes)]
        )
        inter, _ = torch.distributed.new_subgroups_by_enumeration(
            [[node * per_node + i for node in range(nodes)] for i in range(per_node)]
        )
        return intra, inter

    def _setup_model(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import ShardingStrategy

        hybrid = self.sharding_strategy in (ShardingStrategy.HYBRID_SHARD, ShardingStrategy._HYBRID_SHARD_ZERO2)
        if hybrid and "process_group" not in self.kwargs and "device_mesh" not in self.kwargs:
            self.kwargs["process_group"] = self._hybrid_process_groups()
        self.kwargs["auto_wrap_policy"] = wrap_policy_for(model)
        if self.root_device.type != "cpu":
            return super()._setup_model(model)
        if type(self.precision_plugin) is FSDPPrecision:
            self.precision_plugin.__class__ = DeviceAutocastFSDPPrecision  # autocast on CPU, as on the GPU
        from torch.distributed.fsdp import FullyShardedDataParallel

        if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            raise RuntimeError("the model is already wrapped in FSDP; pacofr wraps it itself (one unit per block)")
        wrapped = FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"),  # explicit: with None torch refuses CPU-only hosts
            **self.kwargs,
        )
        # the rest of what Lightning's _setup_model does after wrapping
        _move_torchmetrics_to_device(wrapped, self.root_device)
        _setup_activation_checkpointing(wrapped, self._activation_checkpointing_kwargs)
        return wrapped

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        """Sharded checkpoints are written to a hidden sibling folder and renamed into place once complete
        (:mod:`pacofr.strategies.atomic_save`)."""
        if self._state_dict_type != "sharded":
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        save_folder_atomically(self, filepath, lambda partial: super(BlockFSDPStrategy, self).save_checkpoint(
            checkpoint, partial, storage_options))  # fmt: skip

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Also resumes from a single-file checkpoint written by DDP or by ``pacofr checkpoint consolidate``.

        Lightning maps such a file's position-keyed optimiser state onto the *model's* parameter order, but
        pacofr's optimiser groups run in another order; the names recorded with the checkpoint
        (``pacofr.checkpointing.optim_keys``) key the state by name instead, the layout FSDP loads.
        """
        path = Path(self.broadcast(str(checkpoint_path)))
        if not path.is_file():
            return super().load_checkpoint(path, weights_only)
        from torch.distributed.fsdp import FullyShardedDataParallel

        checkpoint = _lazy_load(path)
        legacy_keys.upgrade_checkpoint(checkpoint)  # the pre-objective layout: keys mapped before FSDP loads them
        _load_raw_module_state(
            checkpoint.pop("state_dict"), module=self.model, world_size=self.world_size,
            strict=self.lightning_module.strict_loading,
        )  # fmt: skip
        checkpoint = _materialize_tensors(checkpoint)
        states = checkpoint.get("optimizer_states")
        if states is None or self.lightning_module.trainer.state.fn != TrainerFn.FITTING:
            return checkpoint
        named = optim_keys.name_keyed_states(checkpoint, states, len(self.optimizers), path)
        with _get_full_state_dict_context(self.model, world_size=self.world_size, rank0_only=False):
            for optimizer, state in zip(self.optimizers, named):
                optimizer.load_state_dict(
                    FullyShardedDataParallel.optim_state_dict_to_load(self.model, optimizer, state)
                )
        return checkpoint
