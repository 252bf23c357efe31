"""CRFR-P MAE (FSFM-style): MAE with structured facial-region masking and an extra weight on the covered
component's patches.

The masker (``StructuredMasker`` in the data module) covers one facial component per image and fills the rest of
the budget proportionally; this objective adds ``covered_weight`` times the reconstruction error over the covered
component to MAE's loss (FSFM's CRFR-P masking with its 0.007 weight). FSFM's identity branch is not part of it:
this is FSFM's masked-image-modelling part alone (``docs/method.md``).
"""

from __future__ import annotations

import torch

from pacofr.losses.reconstruction import reconstruction_loss
from pacofr.objectives.base import PretrainObjective, StepOutput


class FSFM(PretrainObjective):
    """MAE + ``covered_weight`` x reconstruction error of the covered facial component."""

    batch_keys = ("image", "mask", "covered_patches")

    def __init__(self, covered_weight: float = 0.007, **core) -> None:
        """
        Args:
            covered_weight: weight of the covered component's reconstruction term (FSFM: 0.007).
            core: those of :class:`~pacofr.objectives.base.PretrainObjective` (encoder, decoder, geometry).
        """
        super().__init__(**core)
        self.covered_weight = covered_weight
        self.finish_init()

    def losses(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        out = self.forward_model(batch["image"], batch["mask"])
        rec = reconstruction_loss(
            out["pred"], out["target"], out["loss_mask"], batch["covered_patches"], self.covered_weight
        )
        return StepOutput(rec["loss"], {"rec": rec["rec"], "rec_covered": rec["rec_covered"]}, out)
