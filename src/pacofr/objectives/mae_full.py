"""Full-sequence MAE (SimMIM-style): the encoder sees all N patches, the masked ones as a learned mask token; the
decoder reconstructs the masked patches (norm-pix MSE). No codebook, no parsing labels.

The sequence-length-matched baseline of the full-sequence PaCo-FR arm (``paco_fr_full.py``): both train the
encoder on N tokens per image, where MAE and the hybrid train it on the visible quarter; a gain of the full arm
over MAE that this baseline also shows comes from the sequence length, not the candidate codebook
(``docs/study.md``). Cost: about ``1 / (1 - mask_ratio)`` times MAE's encoder work.
"""

from __future__ import annotations

import torch
from torch import nn

from pacofr.losses.reconstruction import reconstruction_loss
from pacofr.objectives.masked_autoencoder import MaskedAutoencoder, StepOutput
from pacofr.objectives.paco_fr_full import masked_indices


class MAEFull(MaskedAutoencoder):
    """Masked image modelling on the full sequence with a learned mask token (SimMIM's input, MAE's decoder)."""

    display_name = "full-sequence MAE"

    def __init__(self, **core) -> None:
        """Args: those of the core, :class:`~pacofr.objectives.masked_autoencoder.MaskedAutoencoder`."""
        super().__init__(**core)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.encoder.embed_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        # the decoder gets every position from the encoder: its own mask token is never used (DDP does not search
        # for unused parameters, so a trained parameter without a gradient would fail)
        self.decoder.mask_token.requires_grad_(False)

    def forward_model(self, images: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every patch through the encoder, the masked ones as the mask token; outputs as the base's."""
        mask = self.check_batch_mask(images, mask)
        target = self.normalized_patches(images)
        tokens = self.encoder.embed_patches(images)
        hidden = masked_indices(mask, self.num_masked)
        b, d = images.shape[0], self.encoder.embed_dim
        substitutes = self.mask_token.to(tokens.dtype).expand(b, self.num_masked, d)
        encoded = self.encoder.forward_masked(tokens, None, hidden, substitutes)
        pred, decoder_tokens = self.decoder(encoded, None)
        return {
            "target": target, "mask": mask, "encoded": encoded, "pred": pred, "decoder_tokens": decoder_tokens,
            "loss_mask": mask,
        }  # fmt: skip

    def losses(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        out = self.forward_model(batch["image"], batch["mask"])
        rec = reconstruction_loss(out["pred"], out["target"], out["loss_mask"])
        return StepOutput(rec["loss"], {"rec": rec["rec"]}, out)

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"mask_token"}

    def encoder_tokens(self) -> int:
        return self.num_patches
