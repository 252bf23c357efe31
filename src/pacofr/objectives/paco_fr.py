"""PaCo-FR: structured facial-region masking, a learnable candidate codebook whose belief-weighted candidate
mixes replace some visible patches, and a spatial-consistency loss (``docs/method.md`` has the equations).

The step, after incubation: the encoder sees the visible patches, ``replace_ratio`` of them carrying the mixture
of their top-m candidate codes' tokens instead of their own; the decoder reconstructs the masked and the replaced
patches (norm-pix MSE, plus ``covered_weight`` x the covered component's error); the codebook terms train the
codes, the pixel head and the Belief Predictor; the spatial term asks the decoder tokens for each patch's region
distribution and region geometry (``region``, needs the parsing labels' region histograms) or for the affinity
structure of an EMA teacher's tokens (``affinity``, parser-free). During incubation (the first
``incubation_steps``) only the codebook trains, on every patch, without the encoder or decoder.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

import torch
from torch import nn

from pacofr.data.format import NUM_REGIONS
from pacofr.losses.codebook import codebook_loss
from pacofr.losses.reconstruction import reconstruction_loss
from pacofr.losses.spatial import affinity_consistency_loss
from pacofr.models.codebook import CandidateCodebook, MixMode
from pacofr.models.spatial_head import SpatialHead
from pacofr.models.unwrap import local_shard, original_param_name, unwrap_fsdp
from pacofr.objectives.interface import Charts, ParamGroup, chart
from pacofr.objectives.masked_autoencoder import MaskedAutoencoder, StepOutput
from pacofr.objectives.region_terms import SPATIAL_CHARTS, RegionSpatialTerms, RegionTargets

CODEBOOK_UPDATES_KEY = "pacofr_codebook_updates"  # checkpoint entry of the codebook's update counter


class PaCoFR(RegionSpatialTerms, MaskedAutoencoder):
    """Reconstruction + candidate codebook + spatial consistency, after a codebook-only incubation."""

    batch_keys = ("image", "mask")
    optional_batch_keys = ("covered_patches", "region_hist")
    display_name = "PaCo-FR"
    designed_masker = "Structured"

    def __init__(
        self,
        covered_weight: float = 0.007,
        num_codes: int = 1024,
        code_dim: int = 256,
        codebook_update: Literal["grad", "ema"] = "grad",
        codebook_options: dict[str, Any] | None = None,
        replace_ratio: float = 0.15,
        num_candidates: int = 4,
        candidate_mix: MixMode = "soft",
        incubation_epochs: float | None = 1.0,
        incubation_steps: int | None = None,
        codebook_weight: float = 1.0,
        codebook_beta: float = 0.25,
        spatial_weight: float = 0.1,
        spatial_variant: Literal["region", "affinity"] = "region",
        spatial_centroid_weight: float = 1.0,
        spatial_on: Literal["visible", "all"] = "visible",
        spatial_pairs: Literal["sum", "mean"] = "sum",
        spatial_sides: bool = True,
        spatial_prior: bool = True,
        spatial_targets: RegionTargets = "own",
        teacher_momentum: float = 0.996,
        codebook_warmup_steps: int = 20,
        codebook_lr_scale: float = 1.0,
        **core: Any,
    ) -> None:
        """
        Args:
            covered_weight: extra weight of the covered facial component's reconstruction error (0: none).
            num_codes, code_dim, codebook_update: codebook size K, code width, ``grad`` (VQ terms) or ``ema``.
            codebook_options: further ``CandidateCodebook`` kwargs (dead_after, reseed_every, ...).
            replace_ratio, num_candidates, candidate_mix: share of visible patches replaced by the belief-weighted
                mix of their top-m candidates, m, and soft | hard (straight-through) | gumbel mixing.
            incubation_epochs, incubation_steps: how long only the codebook (C, g, Belief Predictor) trains at the
                start: ``incubation_epochs`` passes over the training split (the paper's first epoch; turned into
                steps from the data's size and the global batch), or exactly ``incubation_steps`` when given.
            codebook_weight, codebook_beta: lambda_cb and the belief-commitment beta.
            spatial_weight, spatial_variant, spatial_centroid_weight: lambda_sc (0: no spatial loss); ``region``
                (region distribution + centroid-offset geometry, lambda = centroid weight) or ``affinity``
                (EMA-teacher affinity).
            spatial_on: the patches the region spatial loss scores: ``visible`` (neither masked nor replaced: the
                mask's shape, which a structured masker draws around a facial component, cannot give the answer
                away) or ``all``.
            spatial_pairs, spatial_sides: the geometry term sums (or averages) over group pairs, and keeps left
                and right parts apart (``pacofr.losses.sides``).
            spatial_prior: train a position-only prior (a learned region distribution per patch position, no
                image) beside the spatial head on the same targets, logged as ``spatial_prior*``: what the
                head must beat for the spatial loss to be earned from the image. It does not touch the encoder.
            spatial_targets: ``own`` (each image's region histograms) or ``rolled`` (the previous image's in the batch,
                the control for image-specific supervision, ``docs/study.md``).
            teacher_momentum: EMA momentum of the affinity variant's teacher encoder.
            codebook_warmup_steps, codebook_lr_scale: the codebook group's (codes, pixel head, Belief Predictor) own
                short warmup from step 0 and its peak (x the batch-scaled lr), so it trains at full rate during
                incubation; then cosine to the end of the run. The position prior learns on the same schedule at
                the batch-scaled lr.
            core: those of :class:`~pacofr.objectives.masked_autoencoder.MaskedAutoencoder` (encoder, decoder, sizes).
        """
        super().__init__(**core)
        if not 0.0 <= replace_ratio < 1.0:
            raise ValueError(f"replace_ratio must be in [0, 1), got {replace_ratio}")
        self.replace_ratio = replace_ratio
        self.num_replaced = int(round(self.num_visible * replace_ratio))
        self.codebook = CandidateCodebook(
            self.patch_dim,
            self.encoder.embed_dim,
            num_candidates=num_candidates,
            mix=candidate_mix,
            num_codes=num_codes,
            code_dim=code_dim,
            update=codebook_update,
            **(codebook_options or {}),
        )
        self.covered_weight = covered_weight
        if incubation_steps is None and incubation_epochs is None:
            incubation_steps = 0
        if (incubation_steps or 0) < 0 or (incubation_epochs or 0) < 0:
            raise ValueError("incubation_steps and incubation_epochs must not be negative")
        self.incubation_epochs = incubation_epochs
        self.incubation_steps = incubation_steps if incubation_steps is not None else 0
        self._incubation_in_epochs = incubation_steps is None
        self.codebook_weight, self.codebook_beta = codebook_weight, codebook_beta
        self.spatial_variant, self.teacher_momentum = spatial_variant, teacher_momentum
        self.codebook_warmup_steps, self.codebook_lr_scale = codebook_warmup_steps, codebook_lr_scale
        self.set_region_settings(
            spatial_weight, spatial_centroid_weight, spatial_on, spatial_pairs, spatial_sides, spatial_targets
        )
        decoder_width = self.decoder.decoder_dim
        uses_spatial = spatial_weight > 0
        self.spatial_head = SpatialHead(decoder_width) if uses_spatial and spatial_variant == "region" else None
        self.affinity_proj: nn.Linear | None = None
        self.teacher: nn.Module | None = None
        if uses_spatial and spatial_variant == "affinity":
            self.affinity_proj = nn.Linear(decoder_width, self.encoder.embed_dim)
            self.teacher = copy.deepcopy(self.encoder).requires_grad_(False)
        self.position_prior: nn.Parameter | None = None
        if self.spatial_head is not None and spatial_prior:
            self.position_prior = nn.Parameter(torch.zeros(self.num_patches, NUM_REGIONS))
        incubating = {id(p) for p in self.codebook.incubation_parameters()}
        self._incubation_names = {n for n, p in self.named_parameters() if id(p) in incubating}

    # --- the step -----------------------------------------------------------------------------------------
    def configure_run(self, total_steps: int, samples_per_epoch: int | None, global_batch: int) -> None:
        if not self._incubation_in_epochs:
            return
        if not samples_per_epoch:
            raise ValueError(
                "incubation_epochs needs the size of the training split (the data module's train_samples); "
                "give incubation_steps instead"
            )
        self.incubation_steps = math.ceil(self.incubation_epochs * samples_per_epoch / global_batch)

    def forward(self, batch: dict[str, Any], step: int = 0) -> StepOutput:
        if self.incubating(step):
            return self.incubation_losses(batch["image"])  # eager: a phase of a few hundred steps
        return super().forward(batch, step)

    def incubation_losses(self, images: torch.Tensor) -> StepOutput:
        """Only the codebook on all patches (what incubation trains); no encoder or decoder work."""
        target = self.normalized_patches(images)
        out = {"target": target, **self.codebook(target)}
        cb = codebook_loss(out, beta=self.codebook_beta)
        # every other parameter joins the graph with a zero gradient, so DDP (no unused-parameter search) sees all
        # of them; their learning rate is 0 during incubation, so they do not move at all. Under FSDP2 the blocks,
        # whose forward does not run, hold sharded DTensors: their local shards join (the same zero gradients)
        idle = sum(
            local_shard(p).sum()
            for n, p in self.named_parameters()
            if p.requires_grad and original_param_name(n) not in self._incubation_names
        )
        total = self.codebook_weight * cb["loss"] + 0.0 * idle
        terms = {f"codebook_{k}": v for k, v in cb.items() if k != "loss"}
        terms["codebook"] = cb["loss"]
        return StepOutput(total, terms, out)

    def losses(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        images = batch["image"]
        out = self.forward_model(images, batch["mask"])
        rec = reconstruction_loss(
            out["pred"], out["target"], out["loss_mask"], batch.get("covered_patches"), self.covered_weight
        )
        total = rec["loss"]
        terms = {"rec": rec["rec"]}
        if self.covered_weight > 0:
            terms["rec_covered"] = rec["rec_covered"]
        cb = codebook_loss(out, beta=self.codebook_beta)
        total = total + self.codebook_weight * cb["loss"]
        terms.update({f"codebook_{k}": v for k, v in cb.items() if k != "loss"})
        terms["codebook"] = cb["loss"]
        if self.spatial_head is not None:
            total = self.add_region_terms(total, terms, out, batch)
        elif self.teacher is not None:
            with torch.no_grad():
                teacher_tokens = self.teacher.forward_features(images)[:, self.teacher.num_prefix_tokens :]
            sp = affinity_consistency_loss(self.affinity_proj(out["decoder_tokens"]), teacher_tokens)
            total = total + self.spatial_weight * sp
            terms["spatial"] = sp
        return StepOutput(total, terms, out)

    def replacements(self, out: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Choose ``num_replaced`` of the visible patches per image (random), run the codebook on every patch,
        and return the chosen ids (B, R) with their candidate-mixture tokens (B, R, D); ``out`` gains the
        codebook's outputs and ``replaced`` (B, N) bool."""
        keep_idx = out["keep_idx"]
        replace_idx = None
        replaced = torch.zeros_like(out["mask"])
        if self.num_replaced > 0:
            noise = torch.rand(keep_idx.shape, device=keep_idx.device)
            pick = noise.argsort(dim=1)[:, : self.num_replaced]
            replace_idx = keep_idx.gather(1, pick)
            replaced = replaced.scatter(1, replace_idx, True)
        cb = self.codebook(out["target"], replace_idx)
        replace_tokens = cb.pop("replace_tokens", None)
        out.update(cb)
        out["replaced"] = replaced
        return replace_idx, replace_tokens

    # --- after the optimiser step --------------------------------------------------------------------------
    def state_for_after_step(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        return {"target": out["target"], "target_code": out["target_code"]} if "target_code" in out else None

    @torch.no_grad()
    def after_step(self, out: dict[str, torch.Tensor] | None, step: int, apply: torch.Tensor | None = None) -> None:
        """Codebook bookkeeping (usage, EMA, dead-code re-seeding; gated by ``apply``) and the EMA teacher."""
        if out is not None:
            if apply is None:
                self.codebook.update_state(out["target"], out["target_code"])
            else:  # gated on the device: a skipped step leaves every codebook buffer as it was
                self.codebook.update_state(out["target"], out["target_code"], apply=apply)
        super().after_step(out, step, apply)  # the affinity teacher's EMA (momentum_pairs), after incubation

    def momentum(self, step: int) -> float | None:
        return None if self.incubating(step) else self.teacher_momentum

    def fp32_modules(self) -> tuple[str, ...]:
        # the codes, the pixel head and the Belief Predictor: alignment argmins are rounding-sensitive, and the
        # usage/EMA/re-seeding buffers are written in place between steps (a bf16 buffer refuses index_copy_)
        return ("codebook",)

    def replicated_modules(self) -> tuple[str, ...]:
        return ("codebook",)  # re-seeding rewrites codes and Belief Predictor rows between steps

    def momentum_pairs(self) -> tuple[tuple[str, str], ...]:
        return (("encoder", "teacher"),) if self.teacher is not None else ()

    def take_reseeded_rows(self) -> dict[str, torch.Tensor]:
        return {f"codebook.{n}": rows for n, rows in unwrap_fsdp(self.codebook).take_reseeded().items()}

    def monitors(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        metrics = {}
        if "code_perplexity" in out:
            metrics["codebook/perplexity"] = out["code_perplexity"].detach()
            metrics["codebook/usage_fraction"] = self.codebook.usage_fraction()
            metrics["codebook/reseeded_total"] = self.codebook.reseeded_total.float()
        if "replaced" in out:
            metrics["mask/replaced_ratio"] = out["replaced"].float().mean()
        return metrics

    # --- monitoring -----------------------------------------------------------------------------------------
    def tensorboard_charts(self) -> Charts:
        charts = super().tensorboard_charts()
        charts["losses"].update(
            {
                "incubation (1: only the codebook trains; the total jumps at its end)": chart(r"^optim/incubating$"),
                "codebook loss and its belief CE (train)": chart(r"^loss/codebook$", r"^loss/codebook_belief_ce$"),
                "codebook alignment and commitment (train)": chart(
                    r"^loss/codebook_alignment$", r"^loss/codebook_commitment$"
                ),
                "validation codebook loss and its belief CE": chart(r"^val/codebook$", r"^val/codebook_belief_ce$"),
                "validation alignment and commitment": chart(r"^val/codebook_alignment$", r"^val/codebook_commitment$"),
                **SPATIAL_CHARTS,
            }
        )
        charts["codebook health"] = {
            "perplexity (codes in use, effective)": chart(r"^codebook/perplexity$"),
            "share of codes used (assigned in the window)": chart(r"^codebook/usage_fraction$"),
            "codes re-seeded so far": chart(r"^codebook/reseeded_total$"),
        }
        return charts

    def monitor_images(self, limit: int = 256) -> dict[str, torch.Tensor]:
        """The first ``limit`` code prototypes g(c_k) as (K, 3, p, p) images, each min-max scaled."""
        protos = self.codebook.prototypes()[:limit].float()
        p = self.patch_size
        imgs = protos.view(-1, p, p, 3).permute(0, 3, 1, 2)
        lo = imgs.amin(dim=(1, 2, 3), keepdim=True)
        hi = imgs.amax(dim=(1, 2, 3), keepdim=True)
        return {"codebook/prototypes": (imgs - lo) / (hi - lo).clamp_min(1e-6)}

    def monitor_histograms(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The codes the patches were assigned."""
        return {"codebook/usage": out["target_code"]} if "target_code" in out else {}

    # --- checkpoints ----------------------------------------------------------------------------------------
    def host_state(self) -> dict[str, Any]:
        # the codebook's update counter phases dead-code re-seeding; a host int, not a buffer. Read and written on
        # the codebook itself: under FSDP ``self.codebook`` is its wrapper, which would keep its own copy
        return {CODEBOOK_UPDATES_KEY: int(unwrap_fsdp(self.codebook)._updates)}

    def load_host_state(self, checkpoint: dict[str, Any]) -> None:
        if CODEBOOK_UPDATES_KEY in checkpoint:
            unwrap_fsdp(self.codebook)._updates = int(checkpoint[CODEBOOK_UPDATES_KEY])

    # --- optimisation and cost -----------------------------------------------------------------------------
    def no_weight_decay(self) -> set[str]:
        names = super().no_weight_decay() | {f"codebook.{n}" for n in self.codebook.no_weight_decay()}
        return names | ({"position_prior"} if self.position_prior is not None else set())

    def parameter_groups(self) -> list[ParamGroup]:
        # the codebook first (optimiser order, which checkpoints record): it trains from step 0, through the
        # incubation; the backbone waits for it; the position prior only measures and learns from step 0, clipped
        # apart so it neither waits for nor shrinks the backbone's step
        groups = [
            ParamGroup(
                "codebook",
                frozenset(self._incubation_names),
                warmup_steps=self.codebook_warmup_steps,
                lr_scale=self.codebook_lr_scale,
                after_incubation=False,
            ),
            ParamGroup("main"),
        ]
        if self.position_prior is not None:
            prior = frozenset({"position_prior"})
            groups.append(ParamGroup("probe", prior, warmup_steps=self.codebook_warmup_steps, after_incubation=False))
        return groups

    def flops_per_image(self) -> float:
        flops = super().flops_per_image() + self.codebook.flops_per_image(self.num_patches, self.num_replaced, 256)
        if self.spatial_head is not None:
            flops += 3 * 2 * self.num_patches * self.decoder.decoder_dim * self.spatial_head.proj.out_features
        return flops
