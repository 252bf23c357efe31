"""What a training step logs beside its loss terms: the objective's monitors, mask shares, PSNR, the learning
rates, the incubation flag and the data pipeline's problem counters. Device tensors only (no host reads)."""

from __future__ import annotations

from typing import Any

import torch

from pacofr.data.batch import PretrainBatch
from pacofr.objectives.base import PretrainObjective
from pacofr.training.pixels import reconstruction_psnr


def step_metrics(
    objective: PretrainObjective,
    total: torch.Tensor,
    terms: dict[str, torch.Tensor],
    out: dict[str, torch.Tensor],
    batch: PretrainBatch,
    *,
    step: int,
    optimizer: torch.optim.Optimizer | None,
    datamodule: Any,
    with_data_stats: bool,
) -> dict[str, torch.Tensor]:
    metrics = {"loss/total": total.detach(), **{f"loss/{k}": v.detach() for k, v in terms.items()}}
    metrics.update(objective.monitors(out))
    if "loss_mask" in out:
        metrics["mask/ratio"] = batch["mask"].float().mean()
        metrics["recon/psnr_db"] = reconstruction_psnr(objective, batch["image"], out, datamodule)
    if "covered" in batch:
        metrics["mask/covered_fraction"] = (batch["covered"] >= 0).float().mean()
    metrics["optim/incubating"] = torch.tensor(float(objective.incubating(step)))
    for group in optimizer.param_groups if optimizer is not None else []:
        if group.get("group", "").endswith("/decay"):
            metrics[f"optim/lr_{group['group'].split('/')[0]}"] = torch.tensor(group["lr"])
    stats = getattr(datamodule, "data_stats", None)
    if stats is not None and with_data_stats:
        # host-side counters of skipped / replaced samples and damaged shards (this rank's workers), as CPU
        # tensors: a Python number would become a device tensor, i.e. a blocking host-to-device copy
        metrics.update({f"data/{k}": torch.tensor(float(v)) for k, v in stats.as_dict().items()})
    return metrics
