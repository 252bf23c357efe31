"""From network input and norm-pix predictions back to pixels in [0, 1], for monitors (PSNR, image grids).

The normalisation is the data module's (``augment.mean/std``), ImageNet's when there is none: the one source of
those constants is ``pacofr.data.transforms``.
"""

from __future__ import annotations

from typing import Any

import torch

from pacofr.data.transforms import IMAGENET_MEAN, IMAGENET_STD, mean_std_constants
from pacofr.losses.reconstruction import psnr
from pacofr.objectives.interface import PretrainObjective


def pixel_stats(datamodule: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) as (1, 3, 1, 1) float32 tensors: the data module's ``augment`` normalisation, ImageNet's without
    one. Views of the constants ``normalize_images`` uses, built once per device: this runs in every training and
    validation step, where building them from the Python tuples was two blocking host-to-device copies."""
    augment = getattr(datamodule, "augment", None)
    mean, std = mean_std_constants(
        getattr(augment, "mean", IMAGENET_MEAN), getattr(augment, "std", IMAGENET_STD), torch.device(device)
    )
    return mean.view(1, 3, 1, 1), std.view(1, 3, 1, 1)


def denormalise(images: torch.Tensor, datamodule: Any) -> torch.Tensor:
    """Network input -> pixels in [0, 1]."""
    mean, std = pixel_stats(datamodule, images.device)
    return (images.float() * std + mean).clamp(0, 1)


def predicted_pixels(objective: PretrainObjective, raw: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Norm-pix predictions (B, N, P) -> [0, 1] pixel patches, with each target patch's own mean/std; ``raw``:
    the target's [0, 1] pixel patches (``objective.patchify(denormalise(images, ...))``)."""
    mean = raw.mean(-1, keepdim=True)
    std = (raw.var(-1, keepdim=True) + objective.norm_pix_eps).sqrt()
    return (pred.float() * std + mean).clamp(0, 1)


@torch.no_grad()
def reconstruction_psnr(
    objective: PretrainObjective, images: torch.Tensor, out: dict[str, torch.Tensor], datamodule: Any
) -> torch.Tensor:
    """PSNR (dB) of the reconstruction over the patches the loss counts, in [0, 1] pixels."""
    raw = objective.patchify(denormalise(images, datamodule))  # once: the target and the predictions' stats
    return psnr(predicted_pixels(objective, raw, out["pred"].detach()), raw, out["loss_mask"])
