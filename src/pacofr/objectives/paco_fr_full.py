"""PaCo-FR, full sequence: the most literal reading of the paper's framework ("the image Î, in which some patches
have been replaced, goes through the encoder and decoder, which predict the original image I").

The encoder sees all N patches. The structurally masked ones (the masker's ``mask``, a ratio of about 0.4-0.6)
do not enter as themselves: each is replaced by the belief-weighted mix of its top-m candidate codes' tokens,
or, for a ``mask_token_share`` of them, by a learned mask token. The decoder predicts every patch; the loss is
the reconstruction of the replaced patches (plus the covered-region weight), the codebook terms and the spatial
term, as in the hybrid :class:`~pacofr.objectives.paco_fr.PaCoFR` (which drops the masked patches and replaces a
share of the visible ones). Everything else (incubation, codebook upkeep, monitors) is the hybrid's.

Cost: the encoder runs on N tokens instead of ``N (1 - mask_ratio)``, about ``1 / (1 - mask_ratio)`` times the
hybrid's encoder work at the same ratio (4x against the default hybrid at 0.75; ``bench/train_step.py`` measures
the step against MAE's).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from pacofr.objectives.paco_fr import PaCoFR


def masked_indices(mask: torch.Tensor, num_masked: int) -> torch.Tensor:
    """(B, N) bool mask -> (B, num_masked) indices of the masked patches, ascending."""
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # masked (0) first, in patch order
    return order[:, :num_masked]


class PaCoFRFull(PaCoFR):
    """PaCo-FR with the encoder on the full sequence and the masked patches replaced by candidate mixes."""

    display_name = "PaCo-FR full"

    def __init__(
        self,
        mask_token_share: float = 0.0,
        substitute: Literal["candidates", "random_codes", "lowpass"] = "candidates",
        lowpass_factor: int = 4,
        **settings: Any,
    ) -> None:
        """
        Args:
            mask_token_share: share of the masked patches that get the learned mask token instead of a candidate
                mix (0: all candidate mixes).
            substitute: what the other masked patches enter as: ``candidates`` (the method: the belief-weighted
                mix of their top-m candidate codes), or one of the study's controls for what that input carries
                (``docs/study.md``): ``random_codes`` (the same belief weights over m codes drawn at random: the
                mix's statistics without its content) or ``lowpass`` (the patch embedding of the patch itself,
                average-pooled ``lowpass_factor`` x ``lowpass_factor``: a view of the patch's own pixels).
            lowpass_factor: the pooling window of ``lowpass`` (4: a 16-px patch becomes 4 x 4 colours; 8: 2 x 2).
                ``bench/input_leak.py`` measures how much each view holds: on the study's faces a linear
                read-out of the pixels from the 8x8-pooled view matches the candidate mix's (MSE 0.33), the
                4x4-pooled one holds more (0.23).
            settings: those of :class:`~pacofr.objectives.paco_fr.PaCoFR` (``replace_ratio`` does not apply: the
                masked patches are the replaced ones).
        """
        if not 0.0 <= mask_token_share <= 1.0:
            raise ValueError(f"mask_token_share must be in [0, 1], got {mask_token_share}")
        if substitute not in ("candidates", "random_codes", "lowpass"):
            raise ValueError(f"substitute must be candidates, random_codes or lowpass, got {substitute!r}")
        settings["replace_ratio"] = 0.0
        super().__init__(**settings)
        if substitute == "lowpass" and self.patch_size % lowpass_factor:
            raise ValueError(f"lowpass_factor {lowpass_factor} must divide the patch size {self.patch_size}")
        self.mask_token_share = mask_token_share
        self.substitute, self.lowpass_factor = substitute, lowpass_factor
        self.num_mask_tokens = int(round(self.num_masked * mask_token_share))
        self.num_replaced = self.num_masked - self.num_mask_tokens  # the candidate-mix share
        self.mask_token: nn.Parameter | None = None
        if self.num_mask_tokens > 0:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, self.encoder.embed_dim))
            nn.init.normal_(self.mask_token, std=0.02)
        # the decoder gets every position from the encoder: its mask token is never used (DDP, which does not
        # search for unused parameters, would fail on a trained parameter without a gradient)
        self.decoder.mask_token.requires_grad_(False)

    def forward_model(self, images: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every patch through the encoder; the masked ones as candidate mixes (or the mask token). Returns the
        hybrid's outputs; ``replaced`` marks the candidate-mix patches, ``loss_mask`` every masked one."""
        mask = self.check_batch_mask(images, mask)
        target = self.normalized_patches(images)
        tokens = self.encoder.embed_patches(images)
        hidden = masked_indices(mask, self.num_masked)  # (B, M)
        order = torch.rand(hidden.shape, device=hidden.device).argsort(dim=1)
        shuffled = hidden.gather(1, order)
        mixed_idx = shuffled[:, : self.num_replaced]  # the rest of `shuffled` gets the mask token
        with_mix = self.num_replaced > 0 and self.substitute != "lowpass"
        cb = self.codebook(target, mixed_idx if with_mix else None, random_candidates=self.substitute == "random_codes")
        mixes = cb.pop("replace_tokens", None)
        if self.substitute == "lowpass" and self.num_replaced > 0:
            mixes = self.lowpass_tokens(images, mixed_idx)
        b, d = images.shape[0], self.encoder.embed_dim
        substitutes = [mixes] if mixes is not None else []
        if self.num_mask_tokens > 0:
            substitutes.append(self.mask_token.to(tokens.dtype).expand(b, self.num_mask_tokens, d))
        encoded = self.encoder.forward_masked(tokens, None, shuffled, torch.cat(substitutes, dim=1))
        pred, decoder_tokens = self.decoder(encoded, None)
        replaced = torch.zeros_like(mask).scatter(1, mixed_idx, True)
        out = {"target": target, "mask": mask, **cb}
        out.update(pred=pred, decoder_tokens=decoder_tokens, replaced=replaced, loss_mask=mask)
        return out

    def lowpass_tokens(self, images: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """(B, R, D) patch embeddings of the patches ``idx`` after ``lowpass_factor``-pooling (no position)."""
        f = self.lowpass_factor
        pooled = F.interpolate(F.avg_pool2d(images, f), scale_factor=f, mode="nearest")
        tokens = self.encoder.embed_patches(pooled)
        return tokens.gather(1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | ({"mask_token"} if self.mask_token is not None else set())

    def encoder_tokens(self) -> int:
        return self.num_patches
