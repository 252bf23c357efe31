"""What a training step logs beside its loss terms: the objective's monitors, mask shares, PSNR, the learning
rates, the incubation flag and the data pipeline's problem counters. No host reads, and no tensor built from
Python data on most steps: the values the host holds (learning rates, data counters) become (host) tensors only on
the steps the logger writes."""

from __future__ import annotations

from typing import Any

import torch

from pacofr.data.batch import PretrainBatch
from pacofr.objectives.interface import PretrainObjective
from pacofr.training.pixels import reconstruction_psnr

# ``optim/incubating`` as host constants: logged every step, so built once here rather than once per step
_INCUBATING = {False: torch.tensor(0.0), True: torch.tensor(1.0)}


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
    """The step's metrics; ``with_data_stats``: the logger writes this step, so the host's numbers (learning rates,
    data counters) are added too. On other steps they would only be overwritten before anything reads them."""
    metrics = {"loss/total": total.detach(), **{f"loss/{k}": v.detach() for k, v in terms.items()}}
    metrics.update(objective.monitors(out))
    if "loss_mask" in out:
        metrics["mask/ratio"] = batch["mask"].float().mean()
        metrics["recon/psnr_db"] = reconstruction_psnr(objective, batch["image"], out, datamodule)
    if "covered" in batch:
        metrics["mask/covered_fraction"] = (batch["covered"] >= 0).float().mean()
    metrics["optim/incubating"] = _INCUBATING[bool(objective.incubating(step))]  # Lightning logs a clone
    if not with_data_stats:
        return metrics
    # Host numbers as CPU tensors: a Python number would become a device tensor in ``self.log``, i.e. a blocking
    # host-to-device copy; a CPU tensor stays on the host (Lightning keeps a logged value on its own device).
    for group in optimizer.param_groups if optimizer is not None else []:
        if group.get("group", "").endswith("/decay"):
            metrics[f"optim/lr_{group['group'].split('/')[0]}"] = torch.tensor(group["lr"])
    stats = getattr(datamodule, "data_stats", None)
    if stats is not None:
        # host-side counters of skipped / replaced samples and damaged shards (this rank's workers)
        metrics.update({f"data/{k}": torch.tensor(float(v)) for k, v in stats.as_dict().items()})
    return metrics
