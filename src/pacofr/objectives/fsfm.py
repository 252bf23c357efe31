"""FSFM: masked image modelling with CRFR-P masking, plus FSFM's identity (ID) branch.

Follows the FSFM-CVPR25 code (``wolo-wolo/FSFM-CVPR25``: ``fsvfm/models_fsfm.py`` for the networks,
``fsfm-3c/pretrain/engine_pretrain.py`` for the step, ``fsfm-3c/util/loss_contrastive.py`` for the losses,
``fsfm-3c/pretrain/main_pretrain.py`` for the defaults); ``docs/method.md`` §6.4 lists what differs.

- **MIM part (CRFR-P MAE):** the masker (``StructuredMasker``, optionally ``per_batch_component``) covers one facial
  component and fills the rest of the budget proportionally; the loss is MAE's, plus ``covered_weight`` times the
  reconstruction error of the covered component (FSFM's ``weight_sfr`` 0.007).
- **ID branch** (``id_weight`` > 0, FSFM's ``weight_cl`` 0.1) between the masked and the unmasked view of the same
  face. *Online:* the encoder's visible tokens go through a representation decoder (embedding, mask tokens at the
  hidden positions, fixed positions, ``id_decoder_depth`` blocks, norm, then a linear map back to the encoder's
  width: FSFM's ``rep_decoder_pred``); its 1 + N output tokens (class token included) are averaged, projected and
  predicted. *Target:* an EMA copy of encoder, representation decoder and projector on the whole, unmasked image,
  the same mean of 1 + N tokens, projected. Projector and predictor are Linear-LayerNorm-ReLU-Linear
  (``id_hidden_dim`` 4096 -> ``id_proj_dim`` 256). Loss on the L2-normalised vectors: ``simsiam``
  ``-cos(p, z) / 2`` (FSFM-3C's default) or ``byol`` ``2 - 2 cos(p, z)``; one direction, the target carries no
  gradient. The EMA momentum follows a cosine from ``id_momentum`` (0.996) to 1 over the run.

``id_weight: 0`` is the MIM part alone, the study's "CRFR-P MAE" (no extra modules).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from pacofr.losses.reconstruction import reconstruction_loss
from pacofr.models.decoder import MAEDecoder
from pacofr.models.init import mae_init_
from pacofr.objectives.interface import Charts, chart
from pacofr.objectives.masked_autoencoder import MaskedAutoencoder, StepOutput, blocks_flops

IdLoss = Literal["simsiam", "byol"]
ID_LOSSES: tuple[str, ...] = ("simsiam", "byol")


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``2 - 2 cos(p, z)`` averaged over the batch (float32; the target carries no gradient): FSFM's ``BYOLLoss``."""
    p = F.normalize(prediction.float(), dim=-1)
    z = F.normalize(target.detach().float(), dim=-1)
    return (2 - 2 * (p * z).sum(-1)).mean()


def simsiam_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-cos(p, z) / 2`` averaged over the batch (float32; the target carries no gradient): FSFM's
    ``SimSiamLoss``, one direction (prediction of the masked view against the target of the full view)."""
    p = F.normalize(prediction.float(), dim=-1)
    z = F.normalize(target.detach().float(), dim=-1)
    return -0.5 * (p * z).sum(-1).mean()


def projection_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """FSFM's projector / predictor (``BYOLMLP``): Linear, LayerNorm, ReLU, Linear; MAE's init (xavier, zero
    biases), which FSFM's model-wide init gives these heads too."""
    head = nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
    )
    head.apply(mae_init_)
    return head


class RepresentationDecoder(MAEDecoder):
    """FSFM's representation decoder: the encoder's tokens embedded, mask tokens at the hidden positions, fixed
    sin-cos positions, ``depth`` blocks and a norm (MAE's decoder without its pixel head), then ``pred``, a linear
    map back to the encoder's width (FSFM's ``rep_decoder_pred``). Returns every token, the class token first."""

    def __init__(
        self, grid_size: tuple[int, int], patch_size: int, encoder_dim: int, dim: int, depth: int, num_heads: int
    ):
        super().__init__(
            grid_size, patch_size, encoder_dim, decoder_dim=dim, depth=depth, num_heads=num_heads, predict_pixels=False
        )
        self.pred = nn.Linear(dim, encoder_dim)
        mae_init_(self.pred)

    def forward(self, encoded: torch.Tensor, keep_idx: torch.Tensor | None = None) -> torch.Tensor:
        """encoded (B, 1 + K, De), class token first; keep_idx (B, K) the patch of each token (None: all N in
        order). Returns (B, 1 + N, De): the class token and every patch, after ``pred``."""
        return self.pred(self.decode_tokens(encoded, keep_idx))


class FSFM(MaskedAutoencoder):
    """MAE + ``covered_weight`` x the covered component's error + ``id_weight`` x the ID branch."""

    display_name = "FSFM"
    designed_masker = "Structured"

    batch_keys = ("image", "mask", "covered_patches")

    def __init__(
        self,
        covered_weight: float = 0.007,
        id_weight: float = 0.1,
        id_loss: IdLoss = "simsiam",
        id_decoder_depth: int = 2,
        id_decoder_dim: int | None = None,
        id_decoder_heads: int = 16,
        id_hidden_dim: int = 4096,
        id_proj_dim: int = 256,
        id_momentum: float = 0.996,
        **core: Any,
    ) -> None:
        """
        Args:
            covered_weight: weight of the covered component's reconstruction term (FSFM: 0.007).
            id_weight: weight of the ID branch (FSFM: 0.1; 0: no branch, CRFR-P MAE).
            id_loss: ``simsiam`` (``-cos / 2``, FSFM-3C's default ``--cl_loss SimSiam``) or ``byol``
                (``2 - 2 cos``).
            id_decoder_depth: blocks of the representation decoder (FSFM: 2).
            id_decoder_dim: its width (None: the encoder's, as FSFM at every size).
            id_decoder_heads: its attention heads (FSFM: 16 at every size).
            id_hidden_dim, id_proj_dim: the projector's and predictor's hidden and output widths (FSFM: 4096, 256).
            id_momentum: the EMA target's momentum at the start (cosine to 1 over the run; FSFM: 0.996).
            core: those of :class:`~pacofr.objectives.masked_autoencoder.MaskedAutoencoder` (encoder, decoder, sizes).
        """
        super().__init__(**core)
        if id_loss not in ID_LOSSES:
            raise ValueError(f"id_loss must be one of {ID_LOSSES}, got {id_loss!r}")
        self.covered_weight, self.id_weight, self.id_momentum = covered_weight, id_weight, id_momentum
        self.id_loss = id_loss
        self.total_steps = 0  # set by configure_run; 0: the momentum stays at id_momentum
        self.rep_decoder = self.projector = self.predictor = None
        self.target_encoder = self.target_rep_decoder = self.target_projector = None
        if id_weight > 0:
            width = self.encoder.embed_dim
            self.rep_decoder = RepresentationDecoder(
                self.grid_size, self.patch_size, width, id_decoder_dim or width, id_decoder_depth, id_decoder_heads
            )
            self.projector = projection_head(width, id_hidden_dim, id_proj_dim)
            self.predictor = projection_head(id_proj_dim, id_hidden_dim, id_proj_dim)
            # the target starts as a copy of the online parts (FSFM loads the online state into its target network)
            self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
            self.target_rep_decoder = copy.deepcopy(self.rep_decoder).requires_grad_(False)
            self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def finish_init(self) -> None:
        super().finish_init()
        if self.rep_decoder is not None and self.grad_checkpointing:
            self.rep_decoder.set_grad_checkpointing(True)

    @classmethod
    def method_label(cls, masker: str, settings: dict[str, Any] | None = None) -> str:
        """ "CRFR-P MAE" without the ID branch (``id_weight: 0``), else "FSFM"."""
        label = super().method_label(masker, settings)
        if (settings or {}).get("id_weight", 0.1) == 0:
            label = label.replace(cls.display_name, "CRFR-P MAE", 1)
        return label

    def tensorboard_charts(self) -> Charts:
        charts = super().tensorboard_charts()
        if self.rep_decoder is not None:
            charts["losses"].update(
                {
                    "ID branch (train)": chart(r"^loss/id$"),
                    "validation ID branch": chart(r"^val/id$"),
                }
            )
        return charts

    def no_weight_decay(self) -> set[str]:
        names = super().no_weight_decay()
        if self.rep_decoder is None:
            return names
        return names | {f"rep_decoder.{n}" for n in self.rep_decoder.no_weight_decay()}

    def configure_run(self, total_steps: int, samples_per_epoch: int | None, global_batch: int) -> None:
        self.total_steps = total_steps

    def momentum(self, step: int) -> float:
        """The EMA target's momentum at ``step``: the cosine from ``id_momentum`` to 1 (FSFM's
        ``cosine_scheduler(t_momentum, 1, ...)``). The base's ``after_step`` moves every momentum pair by it."""
        if self.total_steps <= 0:
            return self.id_momentum
        progress = min(max(step / self.total_steps, 0.0), 1.0)
        return 1.0 - (1.0 - self.id_momentum) * (math.cos(math.pi * progress) + 1.0) / 2.0

    def online_feature(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """The online branch's prediction (B, id_proj_dim) from the masked view's encoding."""
        tokens = self.rep_decoder(out["encoded"], out["keep_idx"])
        return self.predictor(self.projector(tokens.mean(dim=1)))

    def target_feature(self, images: torch.Tensor) -> torch.Tensor:
        """The target branch's projection (B, id_proj_dim) of the whole, unmasked image (call under no_grad)."""
        encoded = self.target_encoder.forward_masked(self.target_encoder.embed_patches(images))
        return self.target_projector(self.target_rep_decoder(encoded).mean(dim=1))

    def losses(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        images = batch["image"]
        out = self.forward_model(images, batch["mask"])
        rec = reconstruction_loss(
            out["pred"], out["target"], out["loss_mask"], batch["covered_patches"], self.covered_weight
        )
        total = rec["loss"]
        terms = {"rec": rec["rec"], "rec_covered": rec["rec_covered"]}
        if self.rep_decoder is not None:
            with torch.no_grad():
                target = self.target_feature(images)
            prediction = self.online_feature(out)
            identity = (simsiam_loss if self.id_loss == "simsiam" else byol_loss)(prediction, target)
            total = total + self.id_weight * identity
            terms["id"] = identity
        return StepOutput(total, terms, out)

    def momentum_pairs(self) -> tuple[tuple[str, str], ...]:
        if self.target_encoder is None:
            return ()
        return (
            ("encoder", "target_encoder"),
            ("rep_decoder", "target_rep_decoder"),
            ("projector", "target_projector"),
        )

    def flops_per_image(self) -> float:
        """The base's, plus the ID branch: the representation decoder on all 1 + N positions (forward and
        backward), the projector and predictor, and the target's forward-only encoder (all patches),
        representation decoder and projector."""
        flops = super().flops_per_image()
        if self.rep_decoder is None:
            return flops
        n, d = self.num_patches, self.encoder.embed_dim
        rd, tokens = self.rep_decoder.decoder_dim, self.num_patches + 1
        rep_blocks = blocks_flops(self.rep_decoder.depth, rd, tokens, self.rep_decoder.mlp_ratio)
        rep_pred = 2 * tokens * rd * d

        def head(mlp: nn.Sequential) -> float:
            return sum(2 * m.in_features * m.out_features for m in mlp if isinstance(m, nn.Linear))

        online = rep_blocks + 2 * (self.encoder_tokens() + 1) * d * rd + rep_pred
        online += head(self.projector) + head(self.predictor)
        target = (
            blocks_flops(len(self.encoder.blocks), d, tokens, self.encoder_mlp_ratio()) + 2 * n * self.patch_dim * d
        )
        target += rep_blocks + 2 * tokens * d * rd + rep_pred + head(self.projector)
        return flops + 3.0 * online + target
