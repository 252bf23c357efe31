"""``PretrainModule``: the LightningModule that trains any pretraining objective (``pacofr.objectives``).

It owns the step, not the method: the batch-scaled learning rate and the AdamW groups the objective declares, the
non-finite gate (decided on the device on every rank, ``pacofr.training.nonfinite``), clipping, the state updates
after the optimiser step, logging, and what checkpoints carry beside the weights. The step's parts are
``pacofr.training.step``'s, which ``bench/train_step.py`` runs without Lightning: the hooks below call them in
that order.
"""

from __future__ import annotations

import functools
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.distributed.tensor import DTensor

from pacofr.checkpointing.training_state import load_training_state, save_training_state
from pacofr.data.batch import PretrainBatch
from pacofr.errors import UserError
from pacofr.models.unwrap import original_param_name
from pacofr.objectives.interface import PretrainObjective
from pacofr.optim import scaled_lr
from pacofr.training.fp32_modules import keep_declared_fp32
from pacofr.training.fsdp_access import fsdp_replicates_all, is_fsdp, is_fsdp2, momentum_params_whole
from pacofr.training.group_gradients import clip_groups, group_grad_norms, reduce_replicated_grads
from pacofr.training.host_copies import LaggedHostReader
from pacofr.training.nonfinite import NonFiniteGuard, all_ranks_finite_flag, skips_on_device
from pacofr.training.pixels import reconstruction_psnr
from pacofr.training.step import (
    build_optimizer,
    clear_decision,
    device_decision,
    finish_step,
    group_clip_limits,
    restart_after_incubation,
)
from pacofr.training.step_metrics import step_metrics

try:  # the config LightningCLI instantiates the module from (class paths included), when it does
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
except ImportError:  # pragma: no cover - older or newer Lightning: the objective's class is recorded instead
    _given_hyperparameters = None


class PretrainModule(L.LightningModule):
    def __init__(
        self,
        objective: PretrainObjective,
        base_lr: float = 1.5e-4,
        min_lr_ratio: float = 0.0,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 40,
        compile: bool = False,
        compile_backend: str = "inductor",
        max_nonfinite_steps: int = 10,
    ) -> None:
        """
        Args:
            objective: the method (``class_path`` in configs: ``pacofr.objectives.MAE`` | ``FSFM`` | ``PaCoFR`` |
                ``PaCoFRFull``, or any ``PretrainObjective``).
            base_lr: lr per 256 images of global batch (MAE's rule); min_lr_ratio: cosine floor / peak.
            weight_decay, betas: AdamW (no decay on norms, biases and what the objective's ``no_weight_decay()``
                names).
            warmup_steps: linear warmup of the parameter groups that declare none of their own (the objective's
                ``parameter_groups()``; a group that waits for an incubation warms up after it).
            compile: ``torch.compile`` the objective's hot path (model forward and losses as one graph); the
                incubation steps stay eager; refused under the FSDP preset.
            compile_backend: ``torch.compile`` backend (``aot_eager``: dynamo and autograd tracing without code
                generation, for quick CPU checks of the compiled path).
            max_nonfinite_steps: a non-finite loss or gradients (decided on all ranks) skip the step; this many in a
                row stop the run.
        """
        super().__init__()
        given = _given_hyperparameters.get() if _given_hyperparameters is not None else None
        self.save_hyperparameters(ignore=None if given is not None else ["objective"])
        if given is None:
            self.hparams["objective"] = {"class_path": f"{type(objective).__module__}.{type(objective).__name__}"}
        self.objective = objective
        keep_declared_fp32(objective)  # the objective's fp32 islands (autocast off inside them)
        self.nonfinite = NonFiniteGuard(max_nonfinite_steps)
        self._after_step_pending = False
        self._after_step_state: dict[str, torch.Tensor] | None = None
        self._after_step_apply: torch.Tensor | None = None
        self._step_finite: torch.Tensor | None = None
        self._replicated_ids: set[int] | None = None  # parameters of replicated FSDP units (set with the optimiser)
        self._bar_loss = LaggedHostReader()
        self.compile_backend = compile_backend

    # --- set-up -------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if not self.hparams.compile or self.objective.losses_compiled:
            return
        if self._trainer is not None and is_fsdp(self.trainer):
            # pacofr's FSDP is FSDP1 (one unit per ViT block, ``use_orig_params``): each unit gathers and frees its
            # shards in Python hooks around its forward, which dynamo does not trace, so the step would split into
            # a graph per block rather than the one graph compile is for. Refused, not dropped: the user asked.
            raise UserError(
                "model.compile: true is not supported under the FSDP presets (the units' gathers break the graph at "
                "every block); under FSDP2 set --trainer.strategy.init_args.compile_blocks true (each block compiled "
                "inside its unit), or use the DDP preset for one compiled step, or set --model.compile false"
            )
        self.objective.compile_losses(self.compile_backend)

    def global_batch_size(self) -> int:
        per_device = int(getattr(getattr(self.trainer, "datamodule", None), "batch_size", 0) or 0)
        if per_device <= 0:
            raise ValueError("the data module must expose `batch_size` to scale the learning rate")
        return per_device * self.trainer.world_size * self.trainer.accumulate_grad_batches

    def named_param_groups(self) -> list[dict]:
        """The objective's AdamW groups with module-level ``names`` (what checkpoints record, optimiser order)."""
        groups = self.objective.named_param_groups(self.hparams.weight_decay)
        for g in groups:
            g["names"] = [f"objective.{n}" for n in g["names"]]
        return groups

    def configure_optimizers(self):
        hp = self.hparams
        lr = scaled_lr(hp.base_lr, self.global_batch_size())
        total = self.trainer.max_steps
        if total is None or total <= 0:
            raise ValueError("pretraining is step-based: set trainer.max_steps")
        self.objective.configure_run(total, self._samples_per_epoch(), self.global_batch_size())
        self._replicated_ids = None  # the parameters as wrapped for this fit
        groups = self.named_param_groups()
        for g in groups:
            del g["names"]  # kept out of the optimiser: checkpoints record them on their own (optim_keys)
        optimizer, schedule = build_optimizer(
            self.objective, groups, lr=lr, betas=tuple(hp.betas), warmup_steps=hp.warmup_steps, total_steps=total,
            min_lr_ratio=hp.min_lr_ratio,
        )  # fmt: skip
        incubation = self.objective.incubation_steps
        rank_zero_info(
            f"pacofr: peak lr {lr:.3g} (base {hp.base_lr:g} x global batch {self.global_batch_size()} / 256), "
            f"{total} steps, warmup {hp.warmup_steps}, incubation {incubation}"
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _samples_per_epoch(self) -> int | None:
        samples = getattr(self._datamodule(), "train_samples", None)
        return int(samples) if samples else None

    # --- training -----------------------------------------------------------------------------------------
    def training_step(self, batch: PretrainBatch, batch_idx: int):
        self._after_step()  # a micro-batch without an optimiser step (gradient accumulation) left its updates
        self._after_step_pending = True
        total, terms, out = self.objective(batch, self.global_step)
        finite = all_ranks_finite_flag(total)  # one all-reduce on the device; counted with the gradients' flag
        if skips_on_device(self._optimizer()):
            # decided on the device: the step runs, the fused optimiser skips the update through ``found_inf``
            # (set before the step, with the gradients' flag), the objective's updates are gated; no host sync
            self._step_finite = finite if self._step_finite is None else self._step_finite * finite
        elif not bool(finite.item()):  # host path: one blocking read
            self.nonfinite.record(finite, self.global_step)
            self.log("loss/nonfinite_skipped", float(self.nonfinite.total), on_step=True, rank_zero_only=True)
            self._after_step_state = None
            self._after_step_apply = torch.zeros((), device=total.device)  # EMA targets stay where they are
            return None  # every rank skips this step together (the flag is all-reduced)
        self._after_step_state = self.objective.state_for_after_step(out)
        self._log_step(total, terms, out, batch)
        return total

    def _optimizer(self) -> torch.optim.Optimizer | None:
        return self.trainer.optimizers[0] if self.trainer.optimizers else None

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # Right after the optimiser step, not in ``on_train_batch_end``: Lightning runs the module's hook after the
        # callbacks', i.e. after a step checkpoint is written, so a checkpoint of step k would miss step k's
        # state updates (the objective's ``after_step``) and a resumed run would drift from an uninterrupted one.
        self._after_step()
        self._step_finite = None  # the next optimiser step starts its own non-finite decision
        for opt in self.trainer.optimizers:
            clear_decision(opt)

    def _after_step(self) -> None:
        if not self._after_step_pending:
            return
        self._after_step_pending = False
        state, apply = self._after_step_state, self._after_step_apply
        self._after_step_state = self._after_step_apply = None
        optimizer = self._optimizer() if self._trainer is not None else None
        whole = functools.partial(momentum_params_whole, self._trainer, bool(self.objective.momentum_pairs()))
        finish_step(self.objective, optimizer, state, self.global_step, apply, whole)

    def on_before_optimizer_step(self, optimizer) -> None:
        """Before clipping and the step: each schedule group's gradient norm (logged, and what clipping uses),
        and the step's decision: loss and gradients finite on every rank."""
        if is_fsdp2(self.trainer):  # parameters kept whole on every rank: DDP's gradient average, by hand
            reduce_replicated_grads(self.trainer.strategy.replicated_parameters(), self.trainer.world_size)
        restart_after_incubation(self.objective, optimizer, self.global_step)
        norms = self._group_grad_norms(optimizer)
        self._grad_norms = norms
        total = torch.stack(list(norms.values())).square().sum().sqrt() if norms else None
        grads_finite = all_ranks_finite_flag(total) if total is not None else None
        if self._step_finite is not None:  # the device path: the loss's flag of this step's micro-batches
            take = device_decision(optimizer, self._step_finite, grads_finite, self.nonfinite, self.global_step)
            self._after_step_apply = take
        elif grads_finite is not None and self._after_step_pending:  # the host path, the loss was finite
            self.nonfinite.record(grads_finite, self.global_step)
            if not bool(grads_finite.item()):
                for group in optimizer.param_groups:
                    for p in group["params"]:
                        p.grad = None  # the optimiser skips parameters without a gradient
                self._after_step_apply = torch.zeros((), device=total.device)
        if norms and (self.global_step + 1) % max(1, self.trainer.log_every_n_steps) == 0:  # Lightning's write step
            self.log_dict({f"optim/grad_norm_{tag}": n for tag, n in norms.items()}, on_step=True, on_epoch=False)
            self.log("optim/grad_norm", total, on_step=True, on_epoch=False)

    def _group_grad_norms(self, optimizer) -> dict[str, torch.Tensor]:
        if is_fsdp2(self.trainer):  # DTensor gradients: local shards summed over the shard group; the rest counts once
            if self._replicated_ids is None:
                self._replicated_ids = {id(p) for p in self.parameters() if not isinstance(p, DTensor)}
            return group_grad_norms(optimizer, self._replicated_ids, self.trainer.strategy.shard_group, True)
        sharded = is_fsdp(self.trainer)
        if self._replicated_ids is None:  # once per optimiser, not every step: the parameters stay the same
            # parameters FSDP keeps whole on every rank: the objective's replicated (NO_SHARD) units
            whole = tuple(f"objective.{m}." for m in self.objective.replicated_modules())
            named = self.named_parameters()
            self._replicated_ids = {id(p) for n, p in named if whole and original_param_name(n).startswith(whole)}
        # a NO_SHARD run holds whole gradients on every rank: summing their squares over ranks would count each
        # gradient world-size times (a norm sqrt(W) too large)
        sharded = sharded and not fsdp_replicates_all(self.trainer)
        group = self.trainer.strategy.model.process_group if sharded else None
        return group_grad_norms(optimizer, self._replicated_ids, group, sharded)

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Clip by norm per schedule group at the group's limit (``group_clip_limits``: its declared ``clip``, else
        ``gradient_clip_val``; also under FSDP, where each rank scales its shards by the group's whole-model norm):
        a part with large gradients no longer shrinks the encoder's step. Value clipping is Lightning's, over
        everything (not under FSDP)."""
        if gradient_clip_algorithm not in (None, "norm"):
            if not gradient_clip_val:
                return
            if is_fsdp(self.trainer):
                raise ValueError(f"FSDP clips by norm only, got gradient_clip_algorithm={gradient_clip_algorithm!r}")
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        limits = group_clip_limits(self.objective, gradient_clip_val or None)
        if not any(limits.values()):
            return
        clip_groups(optimizer, getattr(self, "_grad_norms", None) or self._group_grad_norms(optimizer), limits)

    def validation_step(self, batch: PretrainBatch, batch_idx: int) -> None:
        """The training losses on held-out faces."""
        total, terms, out = self.objective(batch, self.global_step)
        metrics = {"val/loss": total, "hp/val_loss": total, **{f"val/{k}": v for k, v in terms.items()}}
        if "pred" in out:
            metrics["val/psnr_db"] = reconstruction_psnr(self.objective, batch["image"], out, self._datamodule())
        self.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=True, batch_size=batch["image"].shape[0])

    # --- monitors -----------------------------------------------------------------------------------------
    def _datamodule(self) -> Any:
        return getattr(self._trainer, "datamodule", None) if self._trainer is not None else None

    def _log_step(self, total: torch.Tensor, terms: dict, out: dict, batch: PretrainBatch) -> None:
        # the steps whose values Lightning writes to the loggers (``should_update_logs``: (steps done + 1) % n == 0);
        # only they log the host's numbers (learning rates, data counters), which cost a tensor each
        log_step = (self.global_step + 1) % max(1, self.trainer.log_every_n_steps) == 0
        metrics = step_metrics(
            self.objective, total, terms, out, batch, step=self.global_step, optimizer=self._optimizer(),
            datamodule=self._datamodule(), with_data_stats=log_step,
        )  # fmt: skip
        if self._step_finite is not None:  # decided on the device: the count is a device tensor
            metrics["loss/nonfinite_skipped"] = self.nonfinite.total_tensor.float()
        # The progress bar turns its values into Python numbers on every batch (``.item()``: a sync per step on
        # CUDA). It gets a host copy of the loss instead, made without waiting (a few steps old on CUDA).
        self._bar_loss.push(total.detach())
        landed = self._bar_loss.latest()
        if landed is not None:
            self.log("loss", landed[0], prog_bar=True, on_step=True, on_epoch=False, logger=False)
        self.log_dict(metrics, on_step=True, on_epoch=False)

    def flops_per_image(self) -> float:
        """Analytic training FLOPs per image (for MFU)."""
        return self.objective.flops_per_image()

    # --- checkpoints --------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        optimizers = self.trainer.optimizers if self._trainer is not None else []
        counts = {"in_row": self.nonfinite.in_row, "total": self.nonfinite.total}
        save_training_state(checkpoint, self.named_parameters(), optimizers, counts, self.objective)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # FSDP restores its optimiser inside the strategy (BlockFSDPStrategy.load_checkpoint)
        plain = self._trainer is not None and not is_fsdp(self.trainer)
        current = [(g["group"], g["names"]) for g in self.named_param_groups()] if plain else None
        counts = load_training_state(checkpoint, current, self.objective)
        if counts:
            self.nonfinite.in_row, self.nonfinite.total = int(counts["in_row"]), int(counts["total"])
