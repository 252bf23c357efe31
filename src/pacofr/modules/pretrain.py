"""``PaCoFRPretrain``: the pretraining LightningModule of PaCo-FR and of its baselines.

One module, three methods by configuration (DESIGN 5, configs/pretrain/):

- MAE: random masking (data side), ``use_codebook=False``, ``spatial_weight=0``;
- FSFM-style: structured masking (data side), ``covered_weight`` > 0, no codebook, no spatial loss;
- PaCo-FR: structured masking, candidate codebook with replaced patches, spatial consistency.

The module owns the optimisation recipe (AdamW groups, batch-scaled lr, warmup + cosine per step), the
incubation phase, the non-finite-loss policy and the monitors; the model lives in ``pacofr.models`` and
the losses in ``pacofr.losses``.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.optim.lr_scheduler import LambdaLR

from pacofr.checkpointing import optim_keys
from pacofr.data.format import label_to_region_lut
from pacofr.fsdp_calls import is_fsdp, original_param_name, unwrap_fsdp
from pacofr.losses.codebook import codebook_loss
from pacofr.losses.reconstruction import psnr, reconstruction_loss
from pacofr.losses.spatial import affinity_consistency_loss, spatial_consistency_loss
from pacofr.models.paco_fr import PaCoFRModel
from pacofr.models.patches import unpatchify
from pacofr.modules.host_reader import LaggedHostReader
from pacofr.modules.nonfinite import NonFiniteGuard, skips_on_device
from pacofr.modules.spatial_head import SpatialHead
from pacofr.optim import build_adamw, param_groups, scaled_lr, warmup_cosine


class PaCoFRPretrain(L.LightningModule):
    # torch.compile backend of ``compile: true`` (``aot_eager``: dynamo + autograd tracing without code generation,
    # for quick CPU checks; set on an instance before ``Trainer.fit``)
    compile_backend: str = "inductor"

    def __init__(
        self,
        encoder_size: Literal["tiny", "small", "base", "large"] = "base",
        img_size: int = 224,
        patch_size: int = 16,
        decoder_depth: int | None = None,
        decoder_dim: int | None = None,
        mask_ratio: float = 0.75,
        use_codebook: bool = True,
        num_codes: int = 1024,
        code_dim: int = 256,
        codebook_update: Literal["grad", "ema"] = "grad",
        codebook_options: dict[str, Any] | None = None,
        replace_ratio: float = 0.15,
        num_candidates: int = 4,
        candidate_mix: Literal["soft", "hard", "gumbel"] = "soft",
        incubation_steps: int = 0,
        codebook_weight: float = 1.0,
        codebook_beta: float = 0.25,
        covered_weight: float = 0.0,
        spatial_weight: float = 0.0,
        spatial_variant: Literal["region", "affinity"] = "region",
        spatial_centroid_weight: float = 1.0,
        teacher_momentum: float = 0.996,
        base_lr: float = 1.5e-4,
        min_lr_ratio: float = 0.0,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 40,
        drop_path_rate: float = 0.0,
        grad_checkpointing: bool = False,
        compile: bool = False,
        max_nonfinite_steps: int = 10,
    ) -> None:
        """
        Args:
            encoder_size: ViT size (tiny | small | base | large), patch ``patch_size`` at ``img_size``.
            decoder_depth, decoder_dim: MAE decoder (default per size; base: 8 x 512).
            mask_ratio: must equal the data module masker's ratio (the model drops exactly that many patches).
            use_codebook: PaCo-FR's candidate codebook + replaced patches; False for MAE / FSFM.
            num_codes, code_dim, codebook_update: codebook size K, code width, ``grad`` (VQ terms) or ``ema``.
            codebook_options: further ``CandidateCodebook`` kwargs (dead_after, reseed_every, ...).
            replace_ratio, num_candidates, candidate_mix: share of visible patches replaced by the belief-weighted
                mix of their top-m candidates, m, and soft | hard (straight-through) | gumbel mixing.
            incubation_steps: first steps in which only the codebook (C, g, Belief Predictor) trains.
            codebook_weight, codebook_beta: lambda_cb and the belief-commitment beta.
            covered_weight: extra weight of the covered facial region in the reconstruction loss (FSFM: 0.007).
            spatial_weight, spatial_variant, spatial_centroid_weight: lambda_sc; ``region`` (region distribution
                + centroid-offset geometry, lambda = centroid weight) or ``affinity`` (EMA-teacher affinity).
            teacher_momentum: EMA momentum of the affinity variant's teacher encoder.
            base_lr: lr per 256 images of global batch (MAE rule); min_lr_ratio: cosine floor / peak.
            weight_decay, betas: AdamW (no decay on norms, biases, position embeddings, tokens, codebook).
            warmup_steps: linear warmup (after incubation for the non-codebook parameters).
            drop_path_rate: stochastic depth of the encoder.
            grad_checkpointing: recompute blocks in backward (less memory).
            compile: ``torch.compile`` the training step's hot path: the model forward and the losses, as one
                graph (``compile_step``); the incubation steps and FSDP runs stay eager.
            max_nonfinite_steps: a non-finite loss (decided on all ranks) skips the step; this many in a row stop.
        """
        super().__init__()
        self.save_hyperparameters()
        codebook = {"num_codes": num_codes, "code_dim": code_dim, "update": codebook_update, **(codebook_options or {})}
        self.model = PaCoFRModel(
            encoder_size=encoder_size,
            img_size=img_size,
            patch_size=patch_size,
            decoder_depth=decoder_depth,
            decoder_dim=decoder_dim,
            mask_ratio=mask_ratio,
            use_codebook=use_codebook,
            codebook=codebook,
            replace_ratio=replace_ratio,
            num_candidates=num_candidates,
            mix=candidate_mix,
            encoder_kwargs={"drop_path_rate": drop_path_rate},
        )
        decoder_width = self.model.decoder.decoder_dim
        self.uses_spatial = spatial_weight > 0
        self.spatial_head = SpatialHead(decoder_width) if self.uses_spatial and spatial_variant == "region" else None
        self.affinity_proj = None
        self.teacher = None
        if self.uses_spatial and spatial_variant == "affinity":
            self.affinity_proj = torch.nn.Linear(decoder_width, self.model.encoder.embed_dim)
            self.teacher = copy.deepcopy(self.model.encoder).requires_grad_(False)
        if grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.incubation_steps = incubation_steps if use_codebook else 0
        self._incubation_names = {"model." + n for n in self.model.incubation_parameter_names()}
        self._param_ndim = {n: p.ndim for n, p in self.named_parameters()}  # before any wrapper flattens them
        self.nonfinite = NonFiniteGuard(max_nonfinite_steps)
        self.register_buffer("region_lut", torch.tensor(label_to_region_lut()), persistent=False)
        # the model forward (``_forward``) and the compiled forward + losses of a step after incubation
        # (``_compiled_step``, None: eager), set by ``compile_step``; kept outside the module registry:
        # registered, a compiled module would put every weight in the state dict twice
        object.__setattr__(self, "_forward", self.model)
        object.__setattr__(self, "_compiled_step", None)
        self._codebook_outputs: dict[str, torch.Tensor] | None = None
        self._bookkeeping_pending = False

    # --- set-up ---------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if not self.hparams.compile or self.step_compiled:
            return
        if self._trainer is not None and is_fsdp(self.trainer):
            # Eager under FSDP. pacofr's FSDP is FSDP1 (one unit per ViT block, ``use_orig_params``): each unit
            # gathers and frees its shards in Python hooks around its forward, which dynamo does not trace, so
            # the step would split into a graph per block (and a recompile risk from the swapped parameter
            # views) rather than the one graph compile is for. Compiling under FSDP needs FSDP2 (fully_shard).
            rank_zero_info("pacofr: compile=true is ignored under FSDP (the step runs eager)")
            return
        self.compile_step()

    @property
    def step_compiled(self) -> bool:
        """Whether ``compile_step`` has run (the step's forward and losses go through torch.compile)."""
        return self._compiled_step is not None or self._forward is not self.model

    def compile_step(self, backend: str | None = None, losses: bool = True) -> None:
        """``torch.compile`` the hot path of a step after incubation: the model forward and, with ``losses``,
        every loss term with it (``_main_losses``), traced as one graph without graph breaks. The compiled part
        reads only tensors of the batch and static configuration (never ``global_step`` or the trainer), so
        dynamo guards on nothing that changes from step to step: one compile, no recompiles while training
        (train and eval mode, and grad vs no-grad, are one graph each). ``losses=False`` compiles the model
        forward only (the losses run eager around it), kept for benchmarks to compare with. ``backend``: default
        ``compile_backend``."""
        if self.step_compiled:
            raise RuntimeError("compile_step has already run on this module")
        backend = backend or self.compile_backend
        if losses:
            object.__setattr__(self, "_compiled_step", torch.compile(self._main_losses, backend=backend))
        else:
            object.__setattr__(self, "_forward", torch.compile(self.model, backend=backend))

    def global_batch_size(self) -> int:
        datamodule = getattr(self.trainer, "datamodule", None)
        per_device = int(getattr(datamodule, "batch_size", 0) or 0)
        if per_device <= 0:
            raise ValueError("the data module must expose `batch_size` to scale the learning rate")
        return per_device * self.trainer.world_size * self.trainer.accumulate_grad_batches

    def named_param_groups(self) -> list[dict]:
        """The AdamW groups ``configure_optimizers`` builds, each with a ``names`` list beside ``params``.

        Names and shapes are the module's as built: under FSDP, ``named_parameters()`` adds wrapper prefixes
        and parameters are flat shards between steps. Checkpoints record these names (optimiser order), so a
        resume maps Adam's state by name (``pacofr.checkpointing.optim_keys``).
        """
        hp = self.hparams
        no_decay = {"model." + n for n in self.model.no_weight_decay()}
        named = [(original_param_name(n), p) for n, p in self.named_parameters() if p.requires_grad]
        name_of = {id(p): n for n, p in named}
        groups = []
        # codebook parameters and the rest get separate groups: only the rest waits out incubation
        for tag, subset in (
            ("codebook", [(n, p) for n, p in named if n in self._incubation_names]),
            ("main", [(n, p) for n, p in named if n not in self._incubation_names]),
        ):
            for g in param_groups(subset, hp.weight_decay, no_decay_names=no_decay, ndim=self._param_ndim):
                if g["params"]:
                    g["group"] = f"{tag}/{g['group']}"
                    g["names"] = [name_of[id(p)] for p in g["params"]]
                    groups.append(g)
        return groups

    def configure_optimizers(self):
        hp = self.hparams
        lr = scaled_lr(hp.base_lr, self.global_batch_size())
        groups = self.named_param_groups()
        for g in groups:
            del g["names"]  # kept out of the optimiser: checkpoints record them on their own (optim_keys)
        # fused wherever torch has the kernel (CUDA, CPU): one kernel for all parameters, and the only AdamW that
        # skips a non-finite step on the device (``found_inf``, see pacofr.modules.nonfinite) without a host sync
        fused = all(p.device.type in ("cuda", "cpu") for g in groups for p in g["params"])
        optimizer = build_adamw(groups, lr=lr, betas=tuple(hp.betas), fused=fused)
        total = self.trainer.max_steps
        if total is None or total <= 0:
            raise ValueError("pretraining is step-based: set trainer.max_steps")
        incubation = self.incubation_steps

        def main_schedule(step: int) -> float:
            if step < incubation:
                return 0.0
            return warmup_cosine(step - incubation, hp.warmup_steps, total - incubation, hp.min_lr_ratio)

        def codebook_schedule(step: int) -> float:
            return warmup_cosine(step, hp.warmup_steps, total, hp.min_lr_ratio)

        lambdas = [codebook_schedule if g["group"].startswith("codebook") else main_schedule for g in groups]
        scheduler = LambdaLR(optimizer, lambdas)
        rank_zero_info(
            f"pacofr: peak lr {lr:.3g} (base {hp.base_lr:g} x global batch {self.global_batch_size()} / 256), "
            f"{total} steps, warmup {hp.warmup_steps}, incubation {incubation}"
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- training -----------------------------------------------------------------------------------
    def _incubating(self) -> bool:
        return self.global_step < self.incubation_steps

    def compute_losses(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
        """Total loss, the logged terms, and the model outputs, for one batch."""
        hp = self.hparams
        images = batch["image"]
        terms: dict[str, torch.Tensor] = {}
        if self._incubating():
            out = self.model.forward_codebook(images)
            cb = codebook_loss(out, beta=hp.codebook_beta)
            # every other parameter joins the graph with a zero gradient, so DDP (no unused-parameter search)
            # sees all of them; their lr is 0 during incubation, so they do not move at all
            idle = sum(
                p.sum()
                for n, p in self.named_parameters()
                if p.requires_grad and original_param_name(n) not in self._incubation_names
            )
            total = hp.codebook_weight * cb["loss"] + 0.0 * idle
            terms.update({f"codebook_{k}": v for k, v in cb.items() if k != "loss"})
            terms["codebook"] = cb["loss"]
            return total, terms, out
        step = self._compiled_step or self._main_losses
        return step(images, batch["mask"], batch.get("covered_patches"), batch.get("region_hist"))

    def _main_losses(
        self,
        images: torch.Tensor,
        mask: torch.Tensor,
        covered_patches: torch.Tensor | None,
        region_hist: torch.Tensor | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Model forward and every loss of a step after incubation: what ``compile_step`` compiles. Tensors in,
        static configuration only (hyper-parameters, which heads exist): no trainer state, so no guard on it."""
        hp = self.hparams
        terms: dict[str, torch.Tensor] = {}
        out = self._forward(images, mask)
        rec = reconstruction_loss(out["pred"], out["target"], out["loss_mask"], covered_patches, hp.covered_weight)
        total = rec["loss"]
        terms["rec"] = rec["rec"]
        if hp.covered_weight > 0:
            terms["rec_covered"] = rec["rec_covered"]
        if self.model.codebook is not None:
            cb = codebook_loss(out, beta=hp.codebook_beta)
            total = total + hp.codebook_weight * cb["loss"]
            terms.update({f"codebook_{k}": v for k, v in cb.items() if k != "loss"})
            terms["codebook"] = cb["loss"]
        if self.spatial_head is not None:
            if region_hist is None:
                raise ValueError("the region spatial loss needs the batch's `region_hist` (PretrainDataModule adds it)")
            sp = spatial_consistency_loss(
                self.spatial_head(out["decoder_tokens"]),
                region_hist,
                centroid_weight=hp.spatial_centroid_weight,
                grid_size=self.model.grid_size,
            )
            total = total + hp.spatial_weight * sp["loss"]
            terms.update(spatial=sp["loss"], spatial_region=sp["region"], spatial_centroid=sp["centroid"])
        elif self.teacher is not None:
            with torch.no_grad():
                teacher_tokens = self.teacher.forward_features(images)[:, self.teacher.num_prefix_tokens :]
            sp = affinity_consistency_loss(self.affinity_proj(out["decoder_tokens"]), teacher_tokens)
            total = total + hp.spatial_weight * sp
            terms["spatial"] = sp
        return total, terms, out

    def training_step(self, batch: dict[str, Any], batch_idx: int):
        self._finish_batch()  # a micro-batch without an optimiser step (gradient accumulation) left its bookkeeping
        self._bookkeeping_pending = True
        total, terms, out = self.compute_losses(batch)
        optimizer = self.trainer.optimizers[0] if self.trainer.optimizers else None
        take: torch.Tensor | None = None
        if skips_on_device(optimizer):
            # decided on the device (see pacofr.modules.nonfinite): the step runs, the fused optimiser skips
            # the update through ``found_inf``, the bookkeeping is gated; no host sync
            finite = self.nonfinite.observe(total, self.global_step)
            pending = getattr(self, "_step_finite", None)  # earlier micro-batches of this optimiser step
            take = finite if pending is None else pending * finite
            self._step_finite = take
            optimizer.found_inf = 1.0 - take
        elif not self.nonfinite.check(total, self.global_step):
            self.log("loss/nonfinite_skipped", float(self.nonfinite.total), on_step=True, rank_zero_only=True)
            self._codebook_outputs = None
            return None  # every rank skips this step together (the check is an all-reduce)
        self._codebook_outputs = (
            {"target": out["target"], "target_code": out["target_code"]} if "target_code" in out else None
        )
        self._bookkeeping_apply = take
        self._log_step(total, terms, out, batch)
        return total

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # Bookkeeping right after the optimiser step, not in ``on_train_batch_end``: Lightning runs the module's
        # ``on_train_batch_end`` after the callbacks', i.e. after a step checkpoint is written, so a checkpoint of
        # step k would miss step k's codebook update and a resumed run would drift from an uninterrupted one.
        self._finish_batch()
        self._step_finite = None  # the next optimiser step starts its own non-finite decision
        for opt in self.trainer.optimizers:
            opt.__dict__.pop("found_inf", None)  # used up: a later ``step()`` outside training must not see it

    def _finish_batch(self) -> None:
        """Codebook bookkeeping (usage, EMA, dead-code re-seeding) and the EMA teacher, once per batch."""
        if not getattr(self, "_bookkeeping_pending", False):
            return
        self._bookkeeping_pending = False
        # ``apply``: the device flag of a step decided on the device (None: decided on the host, already taken)
        apply = getattr(self, "_bookkeeping_apply", None)
        self._bookkeeping_apply = None
        if self._codebook_outputs is not None:
            outputs = self._codebook_outputs
            self._codebook_outputs = None
            if apply is None:
                self.model.update_codebook_state(outputs)
            elif self.model.codebook is not None:
                # gated on the device: a skipped step leaves every codebook buffer as it was
                self.model.codebook.update_state(outputs["target"], outputs["target_code"], apply=apply)
        if self.teacher is not None and not self._incubating():
            m = self.hparams.teacher_momentum
            with torch.no_grad():
                weight = 1.0 - m if apply is None else (1.0 - m) * apply
                for t, s in zip(self.teacher.parameters(), self.model.encoder.parameters()):
                    t.lerp_(s.detach(), weight)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None and self.trainer.optimizers:
            # parameter names per group in optimiser order: resume maps Adam's state by name (DDP <-> FSDP)
            name_of = {id(p): original_param_name(n) for n, p in self.named_parameters()}
            checkpoint[optim_keys.NAMES_KEY] = [
                [[name_of[id(p)] for p in g["params"]] for g in opt.param_groups] for opt in self.trainer.optimizers
            ]
        # the run of non-finite steps continues across a resume (it decides when to stop)
        checkpoint["pacofr_nonfinite"] = {"in_row": self.nonfinite.in_row, "total": self.nonfinite.total}
        if self.model.codebook is not None:
            # host-side counter that phases dead-code re-seeding; not a buffer, so not in the state dict
            checkpoint["pacofr_codebook_updates"] = int(unwrap_fsdp(self.model.codebook)._updates)

    # state-dict prefixes older checkpoints carry that this module no longer has (a registered alias of `model`)
    legacy_state_prefixes = ("_forward.",)

    def drop_legacy_state(self, state_dict: dict[str, Any]) -> None:
        """Remove, in place, the entries of older checkpoints that this module no longer has. Called here and by
        BlockFSDPStrategy, which loads the weights itself before this module's ``on_load_checkpoint``."""
        for key in [k for k in state_dict if k.startswith(self.legacy_state_prefixes)]:
            del state_dict[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get("state_dict") is not None:
            self.drop_legacy_state(checkpoint["state_dict"])
        if checkpoint.get("optimizer_states") and self._trainer is not None and not is_fsdp(self.trainer):
            # FSDP restores its optimiser inside the strategy (BlockFSDPStrategy.load_checkpoint); here the
            # state goes to a plain optimiser: re-key it by name onto this run's groups and order
            current = [(g["group"], g["names"]) for g in self.named_param_groups()]
            recorded = checkpoint.get(optim_keys.NAMES_KEY) or []
            states = checkpoint["optimizer_states"]
            for i, state in enumerate(states):
                saved = optim_keys.saved_group_names(state, recorded[i] if i < len(recorded) else None)
                if saved is not None:
                    states[i] = optim_keys.to_positional(state, saved, current)
        counts = checkpoint.get("pacofr_nonfinite")
        if counts:
            self.nonfinite.in_row, self.nonfinite.total = int(counts["in_row"]), int(counts["total"])
        if self.model.codebook is not None and "pacofr_codebook_updates" in checkpoint:
            # on the codebook itself: under FSDP `model.codebook` is its wrapper, which would keep its own copy
            unwrap_fsdp(self.model.codebook)._updates = int(checkpoint["pacofr_codebook_updates"])

    def _log_step(self, total: torch.Tensor, terms: dict, out: dict, batch: dict) -> None:
        metrics = {"loss/total": total.detach()}
        metrics.update({f"loss/{k}": v.detach() for k, v in terms.items()})
        if "code_perplexity" in out:
            metrics["codebook/perplexity"] = out["code_perplexity"].detach()
            metrics["codebook/usage_fraction"] = self.model.codebook.usage_fraction()
        if "loss_mask" in out:
            metrics["mask/ratio"] = batch["mask"].float().mean()
            metrics["mask/replaced_ratio"] = out["replaced"].float().mean()
            metrics["recon/psnr_db"] = self._psnr(batch["image"], out)
        if "covered" in batch:
            metrics["mask/covered_fraction"] = (batch["covered"] >= 0).float().mean()
        metrics["optim/incubating"] = torch.tensor(float(self._incubating()))
        for group in self.trainer.optimizers[0].param_groups if self.trainer.optimizers else []:
            if group.get("group", "").endswith("/decay"):
                metrics[f"optim/lr_{group['group'].split('/')[0]}"] = torch.tensor(group["lr"])
        datamodule = getattr(self.trainer, "datamodule", None)
        stats = getattr(datamodule, "data_stats", None)
        if stats is not None and self.global_step % max(1, self.trainer.log_every_n_steps) == 0:
            # host-side counters of skipped / replaced samples and damaged shards (this rank's workers), as CPU
            # tensors: a Python number would become a device tensor, i.e. a blocking host-to-device copy
            metrics.update({f"data/{k}": torch.tensor(float(v)) for k, v in stats.as_dict().items()})
        if getattr(self, "_step_finite", None) is not None:  # decided on the device: the count is a device tensor
            metrics["loss/nonfinite_skipped"] = self.nonfinite.total_tensor.float()
        # The progress bar turns its values into Python numbers on every batch (``.item()``: a sync per step on
        # CUDA). It gets a host copy of the loss instead, made without waiting (a few steps old on CUDA).
        bar = getattr(self, "_bar_loss", None)
        if bar is None:
            bar = self._bar_loss = LaggedHostReader()
        bar.push(total.detach())
        landed = bar.latest()
        if landed is not None:
            self.log("loss", landed[0], prog_bar=True, on_step=True, on_epoch=False, logger=False)
        self.log_dict(metrics, on_step=True, on_epoch=False)

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        if is_fsdp(self.trainer) and gradient_clip_val:
            # Lightning's FSDP precision refuses norm clipping; FSDP's own clip all-reduces the sharded norms
            if gradient_clip_algorithm not in (None, "norm"):
                raise ValueError(f"FSDP clips by norm only, got gradient_clip_algorithm={gradient_clip_algorithm!r}")
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.global_step % max(1, self.trainer.log_every_n_steps) != 0:
            return
        if is_fsdp(self.trainer):
            # each rank holds gradient shards: FSDP's own norm all-reduces them (max_norm=inf clips nothing)
            norm = self.trainer.strategy.model.clip_grad_norm_(float("inf"))
            self.log("optim/grad_norm", norm, on_step=True, on_epoch=False)
            return
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads:
            self.log("optim/grad_norm", torch.nn.utils.get_total_norm(grads), on_step=True, on_epoch=False)

    # --- validation: the same losses on held-out faces -------------------------------------------------
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        total, terms, out = self.compute_losses(batch)
        metrics = {"val/loss": total, "hp/val_loss": total, **{f"val/{k}": v for k, v in terms.items()}}
        if "pred" in out:
            metrics["val/psnr_db"] = self._psnr(batch["image"], out)
        self.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=True, batch_size=batch["image"].shape[0])

    # --- monitors -----------------------------------------------------------------------------------
    def _pixel_stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The data module's normalisation (its ``augment.mean/std``), ImageNet's without one."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        augment = getattr(datamodule, "augment", None)
        mean = getattr(augment, "mean", IMAGENET_DEFAULT_MEAN)
        std = getattr(augment, "std", IMAGENET_DEFAULT_STD)
        return (
            torch.tensor(mean, device=device).view(1, 3, 1, 1),
            torch.tensor(std, device=device).view(1, 3, 1, 1),
        )

    def denormalise(self, images: torch.Tensor) -> torch.Tensor:
        """Network input -> pixels in [0, 1]."""
        mean, std = self._pixel_stats(images.device)
        return (images.float() * std + mean).clamp(0, 1)

    def predicted_pixels(self, images: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Norm-pix predictions (B, N, P) -> [0, 1] pixel patches, with each target patch's own mean/std."""
        raw = self.model.patchify(self.denormalise(images))
        mean = raw.mean(-1, keepdim=True)
        std = (raw.var(-1, keepdim=True) + self.model.norm_pix_eps).sqrt()
        return (pred.float() * std + mean).clamp(0, 1)

    def _psnr(self, images: torch.Tensor, out: dict) -> torch.Tensor:
        with torch.no_grad():
            raw = self.model.patchify(self.denormalise(images))
            return psnr(self.predicted_pixels(images, out["pred"].detach()), raw, out["loss_mask"])

    def flops_per_image(self) -> float:
        """Analytic training FLOPs per image (used for MFU), including the spatial head."""
        flops = self.model.flops_per_image()
        if self.spatial_head is not None:
            flops += (
                3 * 2 * self.model.num_patches * self.model.decoder.decoder_dim * self.spatial_head.proj.out_features
            )
        return flops

    @torch.no_grad()
    def visualise(self, batch: dict[str, Any], n: int) -> dict[str, torch.Tensor]:
        """Columns for the TensorBoard grid: input, masked input, region map, reconstruction (visible pasted)."""
        images, mask = batch["image"][:n], batch["mask"][:n]
        out = self.model(images, mask)
        grid, p = self.model.grid_size, self.model.patch_size
        pixels = self.denormalise(images)
        hidden = unpatchify(out["loss_mask"].unsqueeze(-1).float().expand(-1, -1, p * p * 3), p, grid)
        masked = torch.where(hidden > 0, torch.full_like(pixels, 0.5), pixels)
        predicted = unpatchify(self.predicted_pixels(images, out["pred"]), p, grid)
        pasted = torch.where(hidden > 0, predicted, pixels)
        from pacofr.callbacks.tensorboard import colour_regions

        regions = colour_regions(self.region_lut[batch["seg"][:n].long()])
        self._last_codes = out.get("target_code")
        return {"input": pixels, "masked": masked, "regions": regions, "reconstruction": pasted}

    @torch.no_grad()
    def codebook_images(self, limit: int = 256) -> torch.Tensor | None:
        """The first ``limit`` code prototypes g(c_k) as (K, 3, p, p) images, each min-max scaled."""
        if self.model.codebook is None:
            return None
        protos = self.model.codebook.prototypes()[:limit].float()
        p = self.model.patch_size
        imgs = protos.view(-1, p, p, 3).permute(0, 3, 1, 2)
        lo = imgs.amin(dim=(1, 2, 3), keepdim=True)
        hi = imgs.amax(dim=(1, 2, 3), keepdim=True)
        return (imgs - lo) / (hi - lo).clamp_min(1e-6)

    @torch.no_grad()
    def code_usage(self) -> torch.Tensor | None:
        """Code ids assigned in the last visualised batch (for TensorBoard's usage histogram)."""
        codes = getattr(self, "_last_codes", None)
        return None if codes is None else codes.reshape(-1)
