"""The region spatial loss as an objective's terms, shared by every method that reads the parsing labels' region
histograms: PaCo-FR (``paco_fr.py``) and its parser-supervision control, MAE + a class-share head
(``mae_parse.py``). ``docs/method.md`` has the equations; ``docs/study.md`` why the control exists.

A method that mixes in :class:`RegionSpatialTerms` sets the ``spatial_*`` attributes, owns ``spatial_head`` (and
optionally ``position_prior``) and calls :meth:`add_region_terms` in its ``losses``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from pacofr.losses.spatial import spatial_consistency_loss
from pacofr.objectives.interface import chart

RegionTargets = Literal["own", "rolled"]

# the spatial loss's charts (TensorBoard custom scalars), for every method with a spatial term
SPATIAL_CHARTS = {
    "spatial terms (train)": chart(r"^loss/spatial.*$"),
    "validation spatial terms": chart(r"^val/spatial.*$"),
}


def region_targets(region_hist: torch.Tensor, mode: RegionTargets) -> torch.Tensor:
    """The targets the spatial head is trained on: each image's own region histograms (``own``), or those of the
    previous image in the batch (``rolled``: the same label statistics with the image-specific link cut, the control
    that tells image-specific supervision from a regulariser)."""
    if mode == "own":
        return region_hist
    if mode == "rolled":
        return region_hist.roll(1, dims=0)
    raise ValueError(f"region targets must be 'own' or 'rolled', got {mode!r}")


class RegionSpatialTerms:
    """The region spatial loss (class shares + centroid geometry) and its position-only prior, for mixing into a
    :class:`~pacofr.objectives.masked_autoencoder.MaskedAutoencoder`."""

    spatial_weight: float
    spatial_centroid_weight: float
    spatial_on: Literal["visible", "all"]
    spatial_pairs: Literal["sum", "mean"]
    spatial_sides: bool
    spatial_targets: RegionTargets = "own"
    grid_size: tuple[int, int]

    def set_region_settings(
        self,
        weight: float,
        centroid_weight: float,
        on: Literal["visible", "all"],
        pairs: Literal["sum", "mean"],
        sides: bool,
        targets: RegionTargets,
    ) -> None:
        """Check and keep the region spatial loss's settings (one place for every method that uses it)."""
        if on not in ("visible", "all"):
            raise ValueError(f"spatial_on must be 'visible' or 'all', got {on!r}")
        if targets not in ("own", "rolled"):
            raise ValueError(f"spatial_targets must be 'own' or 'rolled', got {targets!r}")
        self.spatial_weight, self.spatial_centroid_weight = weight, centroid_weight
        self.spatial_on, self.spatial_pairs, self.spatial_sides = on, pairs, sides
        self.spatial_targets = targets

    def spatial_settings(self, out: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The region spatial loss's settings for a step's outputs (which patches count, pairs, sides, grid)."""
        return dict(
            centroid_weight=self.spatial_centroid_weight,
            grid_size=self.grid_size,
            patch_weight=~out["loss_mask"] if self.spatial_on == "visible" else None,
            pair_reduction=self.spatial_pairs,
            sides=self.spatial_sides,
        )

    def add_region_terms(
        self, total: torch.Tensor, terms: dict[str, torch.Tensor], out: dict[str, torch.Tensor], batch: dict
    ) -> torch.Tensor:
        """``total`` plus ``spatial_weight`` x the spatial loss of the decoder tokens; ``terms`` gains
        ``spatial``, ``spatial_region``, ``spatial_centroid`` (and the prior's, which trains only the prior)."""
        if "region_hist" not in batch:
            raise ValueError("the region spatial loss needs the batch's `region_hist` (the data module's masker)")
        targets = region_targets(batch["region_hist"], self.spatial_targets)
        settings = self.spatial_settings(out)
        sp = spatial_consistency_loss(self.spatial_head(out["decoder_tokens"]), targets, **settings)
        total = total + self.spatial_weight * sp["loss"]
        terms.update(spatial=sp["loss"], spatial_region=sp["region"], spatial_centroid=sp["centroid"])
        if self.position_prior is not None:
            # the same loss from the patch position alone; it trains only the prior (added as a zero, so the
            # total's value and the encoder's gradient are those without it)
            prior_logits = self.position_prior.unsqueeze(0).expand(targets.shape[0], -1, -1)
            prior = spatial_consistency_loss(prior_logits, targets, **settings)
            total = total + (prior["loss"] - prior["loss"].detach())
            terms.update(
                spatial_prior_region=prior["region"].detach(), spatial_prior_centroid=prior["centroid"].detach()
            )
        return total
