"""FSFM: masked image modelling with CRFR-P masking, plus FSFM's identity (ID) branch.

- **MIM part (CRFR-P MAE):** the masker (``StructuredMasker``, optionally ``per_batch_component``) covers one facial
  component and fills the rest of the budget proportionally; the loss is MAE's, plus ``covered_weight`` times the
  reconstruction error of the covered component (FSFM's 0.007).
- **ID branch** (``id_weight`` > 0, FSFM's 0.1), BYOL-style between the masked and the unmasked view of the same
  face: the online encoder's visible tokens go through a representation decoder (mask tokens at the hidden
  positions, ``id_decoder_depth`` blocks), are averaged, projected and predicted; the target is an EMA copy of
  the encoder and projector on the whole, unmasked image. Loss ``2 - 2 cos(prediction, target)``. The EMA
  momentum follows a cosine from ``id_momentum`` (0.996) to 1 over the run.

``id_weight: 0`` is the MIM part alone, the study's "CRFR-P MAE". The ID branch's widths and the MLPs
(Linear-GELU-Linear) are pacofr's reconstruction (``docs/method.md``).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Mlp

from pacofr.losses.reconstruction import reconstruction_loss
from pacofr.models.decoder import MAEDecoder
from pacofr.models.init import mae_init_
from pacofr.objectives.base import PretrainObjective, StepOutput, blocks_flops


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``2 - 2 cos(p, z)`` averaged over the batch (float32; the target carries no gradient)."""
    p = F.normalize(prediction.float(), dim=-1)
    z = F.normalize(target.detach().float(), dim=-1)
    return (2 - 2 * (p * z).sum(-1)).mean()


class FSFM(PretrainObjective):
    """MAE + ``covered_weight`` x the covered component's error + ``id_weight`` x the ID branch."""

    batch_keys = ("image", "mask", "covered_patches")

    def __init__(
        self,
        covered_weight: float = 0.007,
        id_weight: float = 0.1,
        id_decoder_depth: int = 2,
        id_hidden_dim: int = 2048,
        id_proj_dim: int = 256,
        id_momentum: float = 0.996,
        **core: Any,
    ) -> None:
        """
        Args:
            covered_weight: weight of the covered component's reconstruction term (FSFM: 0.007).
            id_weight: weight of the ID branch (FSFM: 0.1; 0: no branch, CRFR-P MAE).
            id_decoder_depth: blocks of the representation decoder (encoder width).
            id_hidden_dim, id_proj_dim: the projector's and predictor's hidden and output widths.
            id_momentum: the EMA target's momentum at the start (cosine to 1 over the run).
            core: those of :class:`~pacofr.objectives.base.PretrainObjective` (encoder, decoder, geometry).
        """
        super().__init__(**core)
        self.covered_weight, self.id_weight, self.id_momentum = covered_weight, id_weight, id_momentum
        self.total_steps = 0  # set by configure_run; 0: the momentum stays at id_momentum
        self.id_decoder = self.projector = self.predictor = self.target_encoder = self.target_projector = None
        if id_weight > 0:
            width = self.encoder.embed_dim
            self.id_decoder = MAEDecoder(
                self.grid_size, self.patch_size, width, decoder_dim=width, depth=id_decoder_depth,
                num_heads=self.encoder.blocks[0].attn.num_heads, predict_pixels=False,
            )  # fmt: skip
            self.projector = Mlp(width, id_hidden_dim, id_proj_dim)
            self.predictor = Mlp(id_proj_dim, id_hidden_dim, id_proj_dim)
            for mlp in (self.projector, self.predictor):
                mlp.apply(mae_init_)
            self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
            self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.finish_init()

    def no_weight_decay(self) -> set[str]:
        names = super().no_weight_decay()
        return names | ({f"id_decoder.{n}" for n in self.id_decoder.no_weight_decay()} if self.id_decoder else set())

    def configure_run(self, total_steps: int, samples_per_epoch: int | None, global_batch: int) -> None:
        self.total_steps = total_steps

    def momentum(self, step: int) -> float:
        """The EMA target's momentum at ``step``: BYOL's cosine from ``id_momentum`` to 1."""
        if self.total_steps <= 0:
            return self.id_momentum
        progress = min(max(step / self.total_steps, 0.0), 1.0)
        return 1.0 - (1.0 - self.id_momentum) * (math.cos(math.pi * progress) + 1.0) / 2.0

    def losses(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        images = batch["image"]
        out = self.forward_model(images, batch["mask"])
        rec = reconstruction_loss(
            out["pred"], out["target"], out["loss_mask"], batch["covered_patches"], self.covered_weight
        )
        total = rec["loss"]
        terms = {"rec": rec["rec"], "rec_covered": rec["rec_covered"]}
        if self.id_decoder is not None:
            _, tokens = self.id_decoder(out["encoded"], out["keep_idx"])
            prediction = self.predictor(self.projector(tokens.mean(dim=1)))
            with torch.no_grad():
                full = self.target_encoder.forward_masked(self.target_encoder.embed_patches(images))
                target = self.target_projector(full[:, self.target_encoder.num_prefix_tokens :].mean(dim=1))
            identity = byol_loss(prediction, target)
            total = total + self.id_weight * identity
            terms["id"] = identity
        return StepOutput(total, terms, out)

    @torch.no_grad()
    def after_step(self, out: dict[str, torch.Tensor] | None, step: int, apply: torch.Tensor | None = None) -> None:
        """The EMA target follows the online encoder and projector (gated by ``apply``)."""
        if self.target_encoder is None:
            return
        weight = 1.0 - self.momentum(step)
        weight = weight if apply is None else weight * apply
        for target, online in ((self.target_encoder, self.encoder), (self.target_projector, self.projector)):
            for t, s in zip(target.parameters(), online.parameters()):
                t.lerp_(s.detach(), weight)

    def momentum_pairs(self) -> tuple[tuple[str, str], ...]:
        if self.target_encoder is None:
            return ()
        return (("encoder", "target_encoder"), ("projector", "target_projector"))

    def flops_per_image(self) -> float:
        flops = super().flops_per_image()
        if self.id_decoder is None:
            return flops
        tokens, d = self.num_patches + 1, self.encoder.embed_dim
        target = blocks_flops(len(self.encoder.blocks), d, tokens, self.encoder_mlp_ratio())  # forward only
        decoder = 3 * blocks_flops(self.id_decoder.depth, d, tokens, self.id_decoder.mlp_ratio)
        return flops + target + decoder
