"""Tiny objectives and modules for the training tests: a ViT-Ti with a one-block decoder on 64 px (or smaller)
images, each method by name, and a PaCo-FR whose loss can be made non-finite at chosen steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from quiet_trainer import quiet_trainer

from pacofr.objectives import FSFM, MAE, PaCoFR, PretrainObjective, StepOutput
from pacofr.training.module import PretrainModule

MODULE_ARGS = ("base_lr", "min_lr_ratio", "weight_decay", "betas", "warmup_steps", "compile", "max_nonfinite_steps")


class PoisonedPaCoFR(PaCoFR):
    """PaCo-FR whose loss is NaN at the listed optimiser steps (``poison``) or from ``poison_from`` on."""

    poison: frozenset[int] = frozenset()
    poison_from: int | None = None

    def forward(self, batch: dict[str, Any], step: int = 0) -> StepOutput:
        total, terms, out = super().forward(batch, step)
        if step in self.poison or (self.poison_from is not None and step >= self.poison_from):
            total = total * float("nan")
        return StepOutput(total, terms, out)


OBJECTIVES: dict[str, type[PretrainObjective]] = {
    "mae": MAE,
    "fsfm": FSFM,
    "pacofr": PaCoFR,
    "poisoned": PoisonedPaCoFR,
}


def tiny_objective(kind: str | type[PretrainObjective] = "pacofr", **overrides: Any) -> PretrainObjective:
    """A tiny objective; PaCo-FR starts without incubation, spatial loss or covered weight unless asked."""
    cls = OBJECTIVES[kind] if isinstance(kind, str) else kind
    kwargs: dict[str, Any] = dict(
        encoder_size="tiny", img_size=64, patch_size=16, mask_ratio=0.75, decoder_depth=1, decoder_dim=64
    )
    if issubclass(cls, PaCoFR):
        kwargs.update(
            num_codes=64,
            code_dim=32,
            codebook_options={"proto_hidden": 64, "belief_hidden": 64, "dead_after": 5, "reseed_every": 5},
            incubation_steps=0,
            spatial_weight=0.0,
            covered_weight=0.0,
        )
    elif issubclass(cls, FSFM):
        kwargs.update(covered_weight=0.007)
    kwargs.update(overrides)
    return cls(**kwargs)


def tiny_module(
    kind: str | type[PretrainObjective] = "pacofr", module_cls: type[PretrainModule] = PretrainModule, **kwargs: Any
) -> PretrainModule:
    """``tiny_objective(kind, ...)`` inside a module; module settings (``MODULE_ARGS``) go to the module."""
    module_kwargs = {"warmup_steps": 2, "base_lr": 1e-3}
    module_kwargs.update({k: kwargs.pop(k) for k in MODULE_ARGS if k in kwargs})
    return module_cls(tiny_objective(kind, **kwargs), **module_kwargs)


def seeded(fn, *args: Any, seed: int = 0, **kwargs: Any):
    torch.manual_seed(seed)
    return fn(*args, **kwargs)


def trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    return quiet_trainer(tmp_path, **{"check_val_every_n_epoch": None, "num_sanity_val_steps": 0, **kwargs})
