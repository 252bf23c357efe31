"""Float32 islands in a mixed-precision step: the objective's ``fp32_modules()`` run with autocast off and their
floating inputs in float32, under any strategy (DDP's autocast, FSDP's autocast with its own fp32 policy for
those units: ``pacofr.strategies``).

The island is made by wrapping the module's ``forward`` (an instance attribute, so the state dict, FSDP's wrapping
and ``torch.compile`` see the same module): ``with torch.autocast(..., enabled=False)`` is a context dynamo traces.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map

FP32_MARK = "_pacofr_fp32"


def _to_fp32(x: Any) -> Any:
    return x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x


class Fp32Forward:
    """A module's ``forward`` with autocast off and floating inputs in float32. An object holding the module, not a
    closure over it: a deep copy of the module (an EMA or SWA copy, a test's twin) gets a copy bound to the copy,
    where a closure would keep calling the original module's forward with the original's parameters; and it
    pickles with the module."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        module = self.module
        device_type = next((p.device.type for p in module.parameters()), "cpu")
        with torch.autocast(device_type=device_type, enabled=False):
            return type(module).forward(module, *tree_map(_to_fp32, args), **tree_map(_to_fp32, kwargs))


def keep_fp32(module: nn.Module) -> nn.Module:
    """Make ``module``'s forward run in float32 with autocast off (idempotent); returns the module."""
    if getattr(module, FP32_MARK, False):
        return module
    module.forward = Fp32Forward(module)
    setattr(module, FP32_MARK, True)
    return module


def keep_declared_fp32(objective: nn.Module) -> list[str]:
    """Apply :func:`keep_fp32` to every module the objective declares (``fp32_modules()``); returns their names."""
    names = list(objective.fp32_modules())
    for name in names:
        keep_fp32(objective.get_submodule(name))
    return names
