"""Pixel reconstruction loss (norm-pix MSE on the masked and replaced patches, plus an optional extra weight
on the covered facial component; docs/method.md) and a PSNR monitor.

Computed in float32 whatever the input dtype, with masked sums (no boolean indexing, no
``.item()``), so it traces under ``torch.compile`` without graph breaks or host syncs.
"""

from __future__ import annotations

import torch


def _check_shapes(pred: torch.Tensor, target: torch.Tensor, *masks: torch.Tensor | None) -> None:
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"pred and target must both be (B, N, P), got {tuple(pred.shape)} and {tuple(target.shape)}")
    for mask in masks:
        if mask is not None and (mask.shape != pred.shape[:2] or mask.dtype != torch.bool):
            raise ValueError(
                f"masks must be bool (B, N) = {tuple(pred.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}"
            )


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the True entries of ``mask``; 0 (not NaN) when the mask is empty.

    ``torch.where`` rather than a product, so a non-finite value outside the mask cannot leak in
    and the gradient outside the mask is exactly zero.
    """
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / mask.sum().clamp_min(1).to(values.dtype)


def reconstruction_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    loss_mask: torch.Tensor,
    covered_mask: torch.Tensor | None = None,
    covered_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """MSE reconstruction loss on the patches the model had to infer.

    Args:
        pred, target: ``(B, N, P)`` per-patch pixels (normally the per-patch normalised pixels of
            ``pacofr.models.patches.normalize_patches``); any float dtype.
        loss_mask: bool ``(B, N)``, True on the patches that count: masked ∪ replaced. Other
            (visible, unreplaced) patches add nothing, neither to the sum nor to the denominator.
        covered_mask: bool ``(B, N)``, the covered facial component's patches (the batch's
            ``covered_patches``); only its intersection with ``loss_mask`` counts.
        covered_weight: weight of the extra covered-region term (FSFM uses 0.007).

    Returns:
        ``{"loss": rec + covered_weight * rec_covered, "rec": ..., "rec_covered": ...}``, float32
        scalars. ``rec`` is the per-patch MSE averaged over all ``loss_mask`` patches of the batch
        (MAE's ``(loss * mask).sum() / mask.sum()``); ``rec_covered`` the same over covered ∩ loss
        patches (0 when there are none, or when ``covered_mask`` is None).
    """
    _check_shapes(pred, target, loss_mask, covered_mask)
    per_patch = (pred.float() - target.float()).square().mean(dim=-1)  # (B, N)
    rec = masked_mean(per_patch, loss_mask)
    rec_covered = torch.zeros_like(rec) if covered_mask is None else masked_mean(per_patch, covered_mask & loss_mask)
    return {"loss": rec + covered_weight * rec_covered, "rec": rec, "rec_covered": rec_covered}


def psnr(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    data_range: float = 1.0,
) -> torch.Tensor:
    """Mean per-image PSNR in dB between patch tensors ``(B, N, P)``, over the patches in ``mask``.

    Meant for monitoring on de-normalised pixels in [0, 1] (``data_range=1``): undo the per-patch
    normalisation of the prediction with the target patch's mean/std and the image normalisation
    first. On normalised pixels the number is only a relative trend (pass the value range you
    want). Images with no patch in ``mask`` are left out of the mean; 0 when no image has any. The
    MSE is floored at 1e-10, so identical inputs give a large finite value, not inf.
    """
    _check_shapes(pred, target, mask)
    squared = (pred.float() - target.float()).square().mean(dim=-1)  # (B, N)
    if mask is None:
        mask = torch.ones(squared.shape, dtype=torch.bool, device=squared.device)
    counts = mask.sum(dim=1)
    mse = torch.where(mask, squared, torch.zeros_like(squared)).sum(dim=1) / counts.clamp_min(1)
    per_image = 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-10))
    has_patches = counts > 0
    total = torch.where(has_patches, per_image, torch.zeros_like(per_image)).sum()
    return total / has_patches.sum().clamp_min(1)
