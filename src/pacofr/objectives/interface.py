"""``PretrainObjective``: what a pretraining method declares, and the only thing the training layers ask.

An objective is a plain ``nn.Module`` (its model parts and its loss) and knows nothing of Lightning. The layers
around it (``pacofr.training``, ``pacofr.callbacks``, ``pacofr.optim``, ``pacofr.strategies``) never name a method
or one of its parts; they read what the objective declares here (as timm's generic code asks the model for
``no_weight_decay()`` and ``group_matcher()``, and solo-learn's methods declare their parameter groups and
momentum pairs):

- **the step**: ``forward(batch, step) -> StepOutput`` (total loss, logged terms, outputs), the compiled hot path
  ``losses``, and ``after_step`` (state changed after the optimiser step; the EMA of every ``momentum_pairs``
  target is done here, once, for every method);
- **optimisation**: ``parameter_groups()`` (which parameters learn on which schedule: warmup, lr scale, whether
  they wait for the incubation, their own clipping), ``no_weight_decay()``, ``incubation_steps``,
  ``take_reseeded_rows()`` (rows whose optimiser moments must restart);
- **distribution and precision**: ``replicated_modules()`` (kept whole on every rank under FSDP),
  ``fp32_modules()`` (float32 whatever the run's precision), ``momentum_pairs()``;
- **monitoring**: ``display_name`` and ``method_label()``, ``tensorboard_charts()``, ``monitors()`` (scalars per
  step), ``monitor_images()`` and ``monitor_histograms()`` (TensorBoard images);
- **export and cost**: ``encoder`` and ``encoder_spec()``, ``flops_per_image()``, ``host_state()``.

The masked-autoencoder core every method of this package builds on is ``masked_autoencoder.py``; a method is a
subclass of it in a file of its own (``docs/architecture.md`` shows how to add one).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from pacofr.data.batch import PretrainBatch, require
from pacofr.errors import UserError
from pacofr.models.unwrap import local_shard, original_param_name
from pacofr.optim import param_groups

# TensorBoard custom-scalar charts: {category: {chart title: ["Multiline", [anchored tag regexes]]}}
Charts = dict[str, dict[str, list[Any]]]


def chart(*patterns: str) -> list[Any]:
    """One TensorBoard custom-scalar chart of every tag matching one of ``patterns`` (anchored regexes: TensorBoard
    finds a pattern anywhere in a tag, so ``loss/rec`` would draw ``loss/rec_covered`` too)."""
    return ["Multiline", list(patterns)]


class StepOutput(NamedTuple):
    """What an objective returns for one batch."""

    total: torch.Tensor  # the scalar loss to minimise
    terms: dict[str, torch.Tensor]  # logged as loss/<name>
    out: dict[str, torch.Tensor]  # model outputs (pred, target, loss_mask, ...), for monitors and after_step


@dataclass(frozen=True)
class ParamGroup:
    """One schedule group of parameters: which parameters, and how they learn.

    ``names``: parameter names relative to the objective; None for the one group that takes every parameter no
    other group names. ``warmup_steps``: its linear warmup (None: the module's ``warmup_steps``). ``lr_scale``: its
    peak learning rate relative to the batch-scaled one. ``after_incubation``: True, the group stays at lr 0
    through the objective's incubation steps, then warms up and decays over the rest of the run (and its AdamW
    step counters restart when the incubation ends); False, it learns from step 0 over the whole run. ``clip``:
    the group's own gradient-norm limit (None: the trainer's ``gradient_clip_val``). Each group is clipped by its
    own norm."""

    name: str
    names: frozenset[str] | None = None
    warmup_steps: int | None = None
    lr_scale: float = 1.0
    after_incubation: bool = True
    clip: float | None = None


class PretrainObjective(nn.Module):
    """The interface every pretraining method implements (see the module docstring)."""

    # batch entries ``losses`` reads (required, then optional); anything else in the batch is not passed to it
    batch_keys: ClassVar[tuple[str, ...]] = ("image", "mask")
    optional_batch_keys: ClassVar[tuple[str, ...]] = ()
    # steps at the start in which only the groups with ``after_incubation=False`` train (see ``incubating``)
    incubation_steps: int = 0
    # what readers call the method (None: the class name), and the masker it was designed with (part of the
    # masker's class name; "": any): another masker is named beside the method (``method_label``)
    display_name: ClassVar[str | None] = None
    designed_masker: ClassVar[str] = ""
    # the exported part: a timm-style ViT (``forward_features``, ``no_weight_decay``)
    encoder: nn.Module

    def __init__(self) -> None:
        super().__init__()
        # the compiled ``losses`` (``compile_losses``), kept outside the module registry: registered, a compiled
        # module would put every weight in the state dict twice
        object.__setattr__(self, "_compiled_losses", None)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every objective's construction ends with :meth:`finish_init`, once, after the most derived
        ``__init__`` has built all its parts: no subclass has to remember the call."""
        super().__init_subclass__(**kwargs)
        init = cls.__init__  # the class's own, or the (already wrapped) one it inherits

        @functools.wraps(init)
        def init_then_finish(self: PretrainObjective, *args: Any, **kw: Any) -> None:
            if type(self) is cls and type(self).losses is PretrainObjective.losses:
                # e.g. a size file's MaskedAutoencoder used without a method file: refused now, not at step 1
                raise UserError(
                    f"{cls.__module__}.{cls.__name__} defines no loss: it is a core, not a method; compose a method "
                    "config after the size file (--config configs/pretrain/method/<method>.yaml)"
                )
            init(self, *args, **kw)
            if type(self) is cls:  # the outermost __init__ has returned: every part exists
                self.finish_init()

        cls.__init__ = init_then_finish  # type: ignore[method-assign]

    def finish_init(self) -> None:
        """Run once when construction is done (see ``__init_subclass__``): settings that apply to every part.
        A subclass with parts of its own to configure extends it (and calls ``super().finish_init()``)."""
        # parameter dimensions as built: wrappers (FSDP) flatten parameters, and weight decay depends on them
        self._param_ndim = {n: p.ndim for n, p in self.named_parameters()}

    # --- the step ---------------------------------------------------------------------------------------------
    def forward(self, batch: PretrainBatch, step: int = 0) -> StepOutput:
        """Total loss, logged terms and outputs for one batch at optimiser step ``step``."""
        require(batch, *self.batch_keys, who=type(self).__name__)
        tensors = {k: batch[k] for k in self.batch_keys + self.optional_batch_keys if k in batch}
        return (self._compiled_losses or self.losses)(tensors)

    def losses(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        """The hot path: model forward and every loss term (what ``compile_losses`` compiles). It may read only
        the tensors in ``batch`` and static configuration, never the step counter (one graph, no recompiles)."""
        raise NotImplementedError

    def compile_losses(self, backend: str = "inductor") -> None:
        """``torch.compile`` ``losses`` as one graph (tensors in, static configuration only: one compile, no
        recompiles while training; train and eval mode, grad and no-grad are one graph each)."""
        if self._compiled_losses is not None:
            raise RuntimeError("compile_losses has already run on this objective")
        object.__setattr__(self, "_compiled_losses", torch.compile(self.losses, backend=backend))

    @property
    def losses_compiled(self) -> bool:
        return self._compiled_losses is not None

    @torch.no_grad()
    def after_step(self, out: dict[str, torch.Tensor] | None, step: int, apply: torch.Tensor | None = None) -> None:
        """State updates once per optimiser step, after it: here the EMA of every momentum pair. ``out``: what
        ``state_for_after_step`` kept. ``apply``: None when the step was taken (decided on the host), else the
        device flag (1 = taken) that must gate every update. A method with state of its own extends it
        (``super().after_step(...)``)."""
        self.update_momentum_pairs(step, apply)

    def momentum(self, step: int) -> float | None:
        """The EMA momentum of the momentum pairs at optimiser step ``step``; None: no update at this step."""
        return None

    @torch.no_grad()
    def update_momentum_pairs(self, step: int, apply: torch.Tensor | None = None) -> None:
        """One gated EMA update of every :meth:`momentum_pairs` target towards its online module:
        ``target += (1 - m) * apply * (online - target)`` with ``m = momentum(step)``."""
        pairs = self.momentum_pairs()
        m = self.momentum(step) if pairs else None
        if m is None:
            return
        weight = 1.0 - m if apply is None else (1.0 - m) * apply
        for online_name, target_name in pairs:
            online, target = self.get_submodule(online_name), self.get_submodule(target_name)
            for t, s in zip(target.parameters(), online.parameters()):
                # FSDP2: both are DTensors sharded alike; their local shards line up element for element
                local_shard(t).lerp_(local_shard(s).detach(), weight)

    def state_for_after_step(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """The outputs ``after_step`` needs (kept by the training module until the optimiser step), or None."""
        return None

    def configure_run(self, total_steps: int, samples_per_epoch: int | None, global_batch: int) -> None:
        """What the objective learns of the run before its schedules are built (called by the training module):
        the optimiser steps, the training split's size (None when unknown) and the global batch. E.g. an
        incubation given in epochs becomes steps, an EMA momentum schedule learns its length."""

    def incubating(self, step: int) -> bool:
        """Whether step ``step`` belongs to the incubation, in which only groups with ``after_incubation=False``
        train (PaCo-FR's codebook-only start)."""
        return step < self.incubation_steps

    # --- precision, sharding, EMA pairs -----------------------------------------------------------------------
    def fp32_modules(self) -> tuple[str, ...]:
        """Submodules (names relative to this module) that must compute and keep their parameters, gradient
        reduction and buffers in float32 whatever the run's precision: bf16 autocast is off inside them, and FSDP
        gives them an fp32 mixed-precision policy of their own (``pacofr.strategies``). For parts whose buffers
        are written in place between steps or whose argmins are rounding-sensitive."""
        return ()

    def replicated_modules(self) -> tuple[str, ...]:
        """Submodules that FSDP keeps whole on every rank (FSDP2: left out of the sharding, their gradients averaged
        over the ranks; FSDP1: ``NO_SHARD`` units): small parts whose between-step bookkeeping rewrites parameters
        outside any forward, where a sharded parameter is only this rank's slice."""
        return ()

    def momentum_pairs(self) -> tuple[tuple[str, str], ...]:
        """``(online, target)`` submodule pairs whose target is an EMA of the online one (updated in
        ``after_step``). Under FSDP1 the training module runs ``after_step`` with the root unit's parameters whole;
        under FSDP2 online and target shards line up and the update runs on them."""
        return ()

    def take_reseeded_rows(self) -> dict[str, torch.Tensor]:
        """Parameter rows given new values by ``after_step`` since the last call (names relative to this module ->
        (rows,) bool device masks): the trainer resets their optimiser moments. Empty for most methods."""
        return {}

    # --- optimisation -----------------------------------------------------------------------------------------
    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to this module) that AdamW must not decay (norms and biases never decay)."""
        return set()

    def parameter_groups(self) -> list[ParamGroup]:
        """The schedule groups, in optimiser order: exactly one with ``names=None`` (the rest). Default: one group,
        ``main``, on the module's schedule."""
        return [ParamGroup("main")]

    def named_param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups from :meth:`parameter_groups`: ``params``, ``names`` (as the unwrapped module gives them:
        under FSDP, ``named_parameters()`` adds wrapper prefixes), ``weight_decay``, ``group`` =
        ``<schedule>/<decay|no_decay>`` and ``schedule`` (the :class:`ParamGroup`'s name); each schedule group
        decayed then not, empty ones left out."""
        specs = self.parameter_groups()
        rest = [s for s in specs if s.names is None]
        if len(rest) != 1:
            raise ValueError(f"{type(self).__name__}.parameter_groups() needs exactly one group with names=None")
        named_elsewhere = set().union(*(s.names for s in specs if s.names is not None))
        named = [(original_param_name(n), p) for n, p in self.named_parameters() if p.requires_grad]
        name_of = {id(p): n for n, p in named}
        groups = []
        for spec in specs:
            members = spec.names if spec.names is not None else None
            subset = [(n, p) for n, p in named if (n in members if members is not None else n not in named_elsewhere)]
            for g in param_groups(subset, weight_decay, no_decay_names=self.no_weight_decay(), ndim=self._param_ndim):
                if g["params"]:
                    g["group"] = f"{spec.name}/{g['group']}"
                    g["schedule"] = spec.name
                    g["names"] = [name_of[id(p)] for p in g["params"]]
                    groups.append(g)
        return groups

    def parameter_group(self, schedule: str) -> ParamGroup:
        """The :class:`ParamGroup` called ``schedule``."""
        for spec in self.parameter_groups():
            if spec.name == schedule:
                return spec
        raise KeyError(f"{type(self).__name__} declares no parameter group {schedule!r}")

    # --- monitoring -------------------------------------------------------------------------------------------
    @classmethod
    def method_label(cls, masker: str, settings: dict[str, Any] | None = None) -> str:
        """What readers call a run of this method trained with ``masker`` (a masker class name, or "none"):
        the display name, with the masker beside it when the method was designed with another one."""
        name = cls.display_name or cls.__name__
        return name if cls.designed_masker in masker or masker == "none" else f"{name} ({masker})"

    def tensorboard_charts(self) -> Charts:
        """The method's charts on TensorBoard's CUSTOM SCALARS page, by category (``losses`` joins the page's
        first category; further categories follow it). Regexes are anchored: TensorBoard finds them anywhere in a
        tag."""
        return {}

    def monitors(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Method-specific scalars to log each step (device tensors; no host reads)."""
        return {}

    def monitor_images(self) -> dict[str, torch.Tensor]:
        """Images of the method's own parts for TensorBoard (tag -> (K, 3, h, w) in [0, 1]), drawn no-grad at the
        image cadence; e.g. PaCo-FR's code prototypes."""
        return {}

    def monitor_histograms(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Values of a no-grad forward's outputs to draw as TensorBoard histograms (tag -> tensor)."""
        return {}

    # --- cost, checkpoints, export ----------------------------------------------------------------------------
    def flops_per_image(self) -> float:
        """Analytic FLOPs (2 per multiply-add) of one training step per image (for MFU)."""
        raise NotImplementedError

    def host_state(self) -> dict[str, Any]:
        """Host-side state (not in the state dict) that a checkpoint must carry, as top-level checkpoint entries."""
        return {}

    def load_host_state(self, checkpoint: dict[str, Any]) -> None:
        """Restore what ``host_state`` wrote (missing entries: leave the state as built)."""

    def encoder_spec(self) -> dict[str, Any]:
        """What rebuilds the encoder (checkpoints record it for ``pacofr eval`` and ``pacofr export``)."""
        raise NotImplementedError
