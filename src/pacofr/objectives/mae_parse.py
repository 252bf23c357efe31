"""MAE + a class-share head: the parser-supervision control for PaCo-FR's spatial loss (``docs/study.md``).

MAE's random masks and norm-pix reconstruction, plus PaCo-FR's region spatial loss on the decoder tokens of the
visible patches (the same head, labels, patches and weight; ``region_terms.py``): with
``spatial_centroid_weight: 0`` only the per-patch class shares (``mae_parse``), with 1.0 also the centroid
geometry (``mae_spatial``). No codebook, no replacement, no structured masking. Needs the parsing labels.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from pacofr.data.format import NUM_REGIONS
from pacofr.losses.reconstruction import reconstruction_loss
from pacofr.models.spatial_head import SpatialHead
from pacofr.objectives.interface import Charts, ParamGroup
from pacofr.objectives.masked_autoencoder import MaskedAutoencoder, StepOutput
from pacofr.objectives.region_terms import SPATIAL_CHARTS, RegionSpatialTerms, RegionTargets


class MAEParse(RegionSpatialTerms, MaskedAutoencoder):
    """Masked autoencoder + the region spatial loss (class shares, optionally the centroid geometry)."""

    batch_keys = ("image", "mask", "region_hist")
    display_name = "MAE + class-share head"

    def __init__(
        self,
        spatial_weight: float = 0.1,
        spatial_centroid_weight: float = 0.0,
        spatial_on: Literal["visible", "all"] = "visible",
        spatial_pairs: Literal["sum", "mean"] = "sum",
        spatial_sides: bool = True,
        spatial_prior: bool = True,
        spatial_targets: RegionTargets = "own",
        prior_warmup_steps: int = 20,
        **core: Any,
    ) -> None:
        """
        Args:
            spatial_weight: lambda_sc, the weight of the spatial loss (PaCo-FR's default 0.1).
            spatial_centroid_weight: weight of the centroid geometry term (0: class shares only).
            spatial_on, spatial_pairs, spatial_sides, spatial_prior, spatial_targets: as in
                :class:`~pacofr.objectives.paco_fr.PaCoFR`.
            prior_warmup_steps: the position prior's warmup (it learns from step 0, clipped apart: it only measures).
            core: those of :class:`~pacofr.objectives.masked_autoencoder.MaskedAutoencoder` (encoder, decoder, sizes).
        """
        super().__init__(**core)
        if spatial_weight <= 0:
            raise ValueError("MAEParse needs spatial_weight > 0 (with 0 it is MAE: use pacofr.objectives.MAE)")
        self.set_region_settings(
            spatial_weight, spatial_centroid_weight, spatial_on, spatial_pairs, spatial_sides, spatial_targets
        )
        self.spatial_head = SpatialHead(self.decoder.decoder_dim)
        self.prior_warmup_steps = prior_warmup_steps
        self.position_prior: nn.Parameter | None = None
        if spatial_prior:
            self.position_prior = nn.Parameter(torch.zeros(self.num_patches, NUM_REGIONS))

    def losses(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        out = self.forward_model(batch["image"], batch["mask"])
        rec = reconstruction_loss(out["pred"], out["target"], out["loss_mask"])
        terms = {"rec": rec["rec"]}
        total = self.add_region_terms(rec["loss"], terms, out, batch)
        return StepOutput(total, terms, out)

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | ({"position_prior"} if self.position_prior is not None else set())

    def parameter_groups(self) -> list[ParamGroup]:
        groups = [ParamGroup("main")]
        if self.position_prior is not None:  # only measures: learns from step 0, clipped apart from the backbone
            prior = frozenset({"position_prior"})
            groups.append(ParamGroup("probe", prior, warmup_steps=self.prior_warmup_steps, after_incubation=False))
        return groups

    def tensorboard_charts(self) -> Charts:
        charts = super().tensorboard_charts()
        charts["losses"].update(SPATIAL_CHARTS)
        return charts

    def flops_per_image(self) -> float:
        head = 3 * 2 * self.num_patches * self.decoder.decoder_dim * self.spatial_head.proj.out_features
        return super().flops_per_image() + head
