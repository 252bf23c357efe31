"""Codebook losses of PaCo-FR (patch-pixel alignment).

* belief CE: the Belief Predictor learns to name each patch's target code k* = argmin ||x~ - g(c_k)||^2;
* alignment: ``||sg(target) - g(c_k*)||^2``, target = the patch (gradient codebook) or its code's EMA
  prototype (EMA codebook); trains C and g;
* belief commitment (*ours*, the beta term): the belief-expected prototype ``softmax(B(x~)) @ sg(g(C))``
  should reproduce the patch, so B's whole distribution (not only its argmax) is pixel-aligned, which is
  what the top-m candidate mixture uses. It trains B only.

None of them reaches the encoder: their inputs are pixels and codebook parameters.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F


def _masked_mean(per_patch: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return per_patch.mean()
    weight = weight.to(per_patch.dtype)
    return (per_patch * weight).sum() / weight.sum().clamp_min(1.0)


def belief_cross_entropy(
    belief_logits: torch.Tensor, target_code: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """CE(B(x~_i), k*_i) averaged over patches (optionally weighted per patch, (B, N))."""
    ce = F.cross_entropy(belief_logits.float().flatten(0, -2), target_code.reshape(-1), reduction="none")
    return _masked_mean(ce.view(target_code.shape), weight)


def alignment_loss(
    assigned_prototype: torch.Tensor, prototype_target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """``||sg(target) - g(c_k*)||^2`` per patch, mean over pixels and patches."""
    per_patch = (assigned_prototype.float() - prototype_target.detach().float()).pow(2).mean(-1)
    return _masked_mean(per_patch, weight)


def belief_commitment(
    belief_logits: torch.Tensor,
    prototypes: torch.Tensor,
    patches: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """``||sg(x~) - softmax(B(x~)) @ sg(G)||^2``: the belief-expected prototype must match the patch."""
    expected = belief_logits.float().softmax(-1) @ prototypes.detach().float()
    per_patch = (expected - patches.detach().float()).pow(2).mean(-1)
    return _masked_mean(per_patch, weight)


def codebook_loss(
    outputs: Mapping[str, torch.Tensor],
    beta: float = 0.25,
    ce_weight: float = 1.0,
    align_weight: float = 1.0,
    weight: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """All codebook terms from the PaCo-FR objective's outputs; ``loss`` is their weighted sum.

    ``outputs`` needs belief_logits, target_code, assigned_prototype, prototype_target,
    prototypes_detached and target (the normalised patches). ``weight`` (B, N) restricts the patches.
    """
    terms = {
        "belief_ce": belief_cross_entropy(outputs["belief_logits"], outputs["target_code"], weight),
        "alignment": alignment_loss(outputs["assigned_prototype"], outputs["prototype_target"], weight),
    }
    total = ce_weight * terms["belief_ce"] + align_weight * terms["alignment"]
    if beta > 0:
        terms["commitment"] = belief_commitment(
            outputs["belief_logits"], outputs["prototypes_detached"], outputs["target"], weight
        )
        total = total + beta * terms["commitment"]
    terms["loss"] = total
    return terms
