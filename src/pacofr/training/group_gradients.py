"""Gradient norms and clipping per schedule group (the objective's ``parameter_groups()``: e.g. ``main``, the
backbone, and groups of parts with schedules of their own).

One global norm lets a part with large gradients (in PaCo-FR often 95 % of the total) set the clipping
factor of the encoder's step too; per group, each part is clipped by its own norm. Under FSDP each rank holds
gradient shards: their squares are summed over the sharding group, while parameters of replicated (``NO_SHARD``)
units count once. FSDP2 (``fully_shard``) gradients are DTensors: their local shards count, summed over the
shard group, the parameters kept whole (replicated modules) counted once (``pacofr.strategies.fsdp2``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor


def local_grad(p: torch.Tensor) -> torch.Tensor:
    """The gradient this rank holds: an FSDP2 DTensor's local shard, else the gradient itself."""
    grad = p.grad
    return grad.to_local() if isinstance(grad, DTensor) else grad


def group_grad_norms(
    optimizer: torch.optim.Optimizer,
    replicated: Iterable[int] = (),
    shard_group: dist.ProcessGroup | None = None,
    sharded: bool = False,
) -> dict[str, torch.Tensor]:
    """Gradient norm per ``schedule`` tag of the optimiser's groups, on the device, over the whole model.

    ``sharded``: gradients are FSDP shards (summed over ``shard_group``), except the parameters whose ids are in
    ``replicated`` (whole on every rank)."""
    whole = set(replicated)
    # every tag of the optimiser, with or without gradients here: under FSDP a rank may hold no shard of a small
    # group, and every rank must all-reduce the same tags (a rank with fewer would hang the collective)
    tags = sorted({group.get("schedule", "main") for group in optimizer.param_groups})
    if not tags:
        return {}
    device = next((p.device for g in optimizer.param_groups for p in g["params"]), torch.device("cpu"))
    zero = torch.zeros((), dtype=torch.float32, device=device)
    squares = {tag: [zero, zero] for tag in tags}  # tag -> [sum over sharded grads, sum over replicated grads]
    dtensors = any(isinstance(p, DTensor) for g in optimizer.param_groups for p in g["params"])
    for group in optimizer.param_groups:
        sums = squares[group.get("schedule", "main")]
        for p in group["params"]:
            if p.grad is None or p.grad.numel() == 0:
                continue
            i = int(sharded and id(p) in whole)
            sums[i] = sums[i] + local_grad(p).detach().float().square().sum()
    per_shard = torch.stack([squares[t][0] for t in tags])
    if (sharded or dtensors) and dist.is_available() and dist.is_initialized():
        dist.all_reduce(per_shard, group=shard_group)
    return {t: (per_shard[i] + squares[t][1]).sqrt() for i, t in enumerate(tags)}


def clip_groups(
    optimizer: torch.optim.Optimizer, norms: dict[str, torch.Tensor], max_norm: float | Mapping[str, float | None]
) -> None:
    """Scale each group's gradients by ``min(1, limit / norm)`` of its schedule tag (each rank its shards); the
    limit is ``max_norm``, or ``max_norm[tag]`` per tag (None: that group is not clipped)."""
    for group in optimizer.param_groups:
        tag = group.get("schedule", "main")
        norm = norms.get(tag)
        limit = max_norm.get(tag) if isinstance(max_norm, Mapping) else max_norm
        grads = [local_grad(p) for p in group["params"] if p.grad is not None and p.grad.numel() > 0]
        if norm is not None and limit and grads:
            # torch's clip_grads_with_norm_ arithmetic, on the local tensors (FSDP2's DTensors refuse a plain factor)
            factor = (limit / (norm + 1e-6)).clamp(max=1.0)
            torch._foreach_mul_(grads, factor.to(grads[0].device))


@torch.no_grad()
def reduce_replicated_grads(params: Sequence[torch.Tensor], world_size: int) -> None:
    """Average the gradients of parameters kept whole on every rank over all ranks, in fp32 (DDP's all-reduce, done
    once per optimiser step). A parameter without a gradient on some rank counts zero there; one without a gradient
    on every rank keeps none (the optimiser skips it, as under DDP). One collective, same order on every rank."""
    if not params or world_size == 1 or not dist.is_initialized():
        return
    device = params[0].device
    flat = [
        (p.grad.detach().float().reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=device))
        for p in params
    ]
    present = torch.tensor([float(p.grad is not None) for p in params], device=device)
    buffer = torch.cat([*flat, present])
    dist.all_reduce(buffer)  # gloo has no AVG: sum, then divide
    sums, counts = buffer[: -len(params)], buffer[-len(params) :]
    offset = 0
    for p, count in zip(params, counts.tolist()):
        n = p.numel()
        if count > 0:
            mean = (sums[offset : offset + n] / world_size).view_as(p).to(p.dtype)
            if p.grad is None:
                p.grad = mean
            else:
                p.grad.copy_(mean)
        offset += n
