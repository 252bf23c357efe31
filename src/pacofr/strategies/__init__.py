"""Distributed strategies with typed, YAML-friendly arguments: DDP (Lightning's), and the sharded presets.

- :class:`FSDP2Strategy` (:mod:`pacofr.strategies.fsdp2`): ``fully_shard``, the ``fsdp`` preset
  (``configs/trainer/fsdp.yaml``, ``fsdp_cpu.yaml``);
- :class:`BlockFSDPStrategy` (:mod:`pacofr.strategies.fsdp1`): FSDP1, selectable for one more release
  (``configs/trainer/fsdp1.yaml``); it says so once when it starts.
"""

from pacofr.strategies.fsdp1 import BlockFSDPStrategy, DeviceAutocastFSDPPrecision, declared_units, wrap_policy_for
from pacofr.strategies.fsdp2 import FSDP2Strategy, replicated_parameters, shard_objective

__all__ = [
    "BlockFSDPStrategy",
    "DeviceAutocastFSDPPrecision",
    "FSDP2Strategy",
    "declared_units",
    "replicated_parameters",
    "shard_objective",
    "wrap_policy_for",
]
