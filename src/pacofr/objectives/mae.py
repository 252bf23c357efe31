"""MAE: random masking (the data module's ``RandomMasker``) and the norm-pix reconstruction of the masked
patches; nothing else. The baseline every other method is measured against (``docs/method.md``)."""

from __future__ import annotations

import torch

from pacofr.losses.reconstruction import reconstruction_loss
from pacofr.objectives.masked_autoencoder import MaskedAutoencoder, StepOutput


class MAE(MaskedAutoencoder):
    """Masked autoencoder: loss = mean squared error of the normalised pixels over the masked patches."""

    display_name = "MAE"
    designed_masker = "Random"

    def __init__(self, **core) -> None:
        """Args: those of the core, :class:`~pacofr.objectives.masked_autoencoder.MaskedAutoencoder`."""
        super().__init__(**core)

    def losses(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        out = self.forward_model(batch["image"], batch["mask"])
        rec = reconstruction_loss(out["pred"], out["target"], out["loss_mask"])
        return StepOutput(rec["loss"], {"rec": rec["rec"]}, out)
