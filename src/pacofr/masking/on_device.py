"""Masks built on the training device from small per-sample draws made in the data workers.

On the device image path (:mod:`pacofr.data.device_images`) a worker does not build the masks: it draws, from
each sample's own mask generator (seeded from (seed, epoch, sample key) as on the CPU path), the very random
numbers the masker's CPU code would draw (:meth:`~pacofr.masking.StructuredMasker.draws`, a few hundred numbers
per sample), and ships them with the label map. The device then builds the region histograms and the masks for
the whole batch (:meth:`~pacofr.masking.StructuredMasker.batch_from_draws`) with the functions below: the same
numbers as the workers' ``masker.batch`` (bit for bit: integer counts, the same float64 keys, stable sorts,
sequential cumulative sums), without a host sync (no ``bincount``, no ``.item()``, no data-dependent shape), so
the kernels queue behind the training step's.

The one place the two can differ: the CPU masker ranks random keys with ``torch.argsort`` (not stable) and the
device with a stable sort; they pick different patches only when two float32 draws of a sample are exactly equal
and straddle the cut (24-bit draws: about 1 sample in 10^3 of 196-patch maps has such a pair at all, far fewer
at the cut). Counts, alignment and the function of (seed, epoch, key) hold either way.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from pacofr.data.format import NUM_REGIONS, label_to_region_lut
from pacofr.masking.histograms import patch_grid, patch_region_histograms


@lru_cache(maxsize=16)
def _region_lut(device: torch.device) -> torch.Tensor:
    return torch.tensor(label_to_region_lut(), dtype=torch.int64, device=device)


@lru_cache(maxsize=16)
def _patch_of_pixel(rows: int, cols: int, patch_size: int, device: torch.device) -> torch.Tensor:
    """int64 ``(H * W,)``: ``patch id * NUM_REGIONS`` of every pixel (row-major patch ids)."""
    ids = torch.arange(rows * cols, device=device).reshape(rows, 1, cols, 1) * NUM_REGIONS
    return ids.expand(rows, patch_size, cols, patch_size).reshape(-1).contiguous()


def region_histograms(segs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """float32 ``(B, N, NUM_REGIONS)``: :func:`~pacofr.masking.histograms.patch_region_histograms` of maps the
    workers have already checked (:func:`pacofr.data.decode.check_labels`), without a host sync: on a CPU tensor
    the workers' own numpy count, elsewhere :func:`scatter_region_histograms`. The same floats either way."""
    if segs.device.type == "cpu":
        return patch_region_histograms(segs, patch_size)
    return scatter_region_histograms(segs, patch_size)


def scatter_region_histograms(segs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """The histograms by one ``scatter_add_`` of ones into a fixed-size float32 buffer, on any device, no host
    sync (``bincount`` sizes its output from the data's maximum: a sync on CUDA). The counts are integers <= p * p,
    exact in any order of addition, and divided by ``p * p`` as the CPU code divides them. Ids are not checked
    (the workers did)."""
    rows, cols = patch_grid(segs, patch_size)
    batch, num_patches = segs.shape[0], rows * cols
    slots = num_patches * NUM_REGIONS
    index = _region_lut(segs.device)[segs.reshape(batch, -1).long()]
    index += _patch_of_pixel(rows, cols, patch_size, segs.device)
    index += torch.arange(batch, device=segs.device).view(batch, 1) * slots
    counts = torch.zeros(batch * slots, dtype=torch.float32, device=segs.device)
    counts.scatter_add_(0, index.reshape(-1), torch.ones((), device=segs.device).expand(index.numel()))
    return (counts / float(patch_size * patch_size)).view(batch, num_patches, NUM_REGIONS)


def sequential_cumsum(values: torch.Tensor) -> torch.Tensor:
    """Cumulative sum along the last axis, one addition at a time (numpy's order), on any device: a parallel
    scan may round float64 sums differently in the last bit."""
    columns = [values[..., 0]]
    for j in range(1, values.shape[-1]):
        columns.append(columns[-1] + values[..., j])
    return torch.stack(columns, dim=-1)


def proportional_fill_rows(
    available: torch.Tensor, dominant_group: torch.Tensor, budgets: torch.Tensor, uniforms: torch.Tensor
) -> torch.Tensor:
    """:func:`pacofr.masking.structured_masker.proportional_fill_rows` in torch, on any device, no host sync:
    ``available``/``dominant_group`` ``(B, N)``, ``budgets`` int64 ``(B,)`` (clamped to ``[0, available]``
    instead of raising: rows the caller discards may carry any value), ``uniforms`` float64 ``(B, N + 1)``."""
    num_patches = available.shape[1]
    groups = torch.arange(NUM_REGIONS, device=available.device)
    sizes = ((dominant_group.unsqueeze(-1) == groups) & available.unsqueeze(-1)).sum(dim=1)  # (B, G) int64
    total = sizes.sum(dim=1)
    budgets = torch.minimum(budgets.clamp(min=0), total)
    divisor = total.clamp(min=1)
    offset = torch.minimum((uniforms[:, 0] * total).to(torch.int64), (total - 1).clamp(min=0))
    scaled = sizes * budgets.unsqueeze(1)
    reached = ((scaled % divisor.unsqueeze(1)).cumsum(dim=1) + offset.unsqueeze(1)) // divisor.unsqueeze(1)
    extras = reached.clone()
    extras[:, 1:] -= reached[:, :-1]
    quotas = scaled // divisor.unsqueeze(1) + extras
    keys = torch.where(available, dominant_group + uniforms[:, 1:], float(NUM_REGIONS + 1))
    order = torch.sort(keys, dim=1, stable=True).indices
    group_of_sorted = dominant_group.gather(1, order)
    group_start = sizes.cumsum(dim=1) - sizes
    rank_in_group = torch.arange(num_patches, device=available.device) - group_start.gather(1, group_of_sorted)
    picked_sorted = (rank_in_group < quotas.gather(1, group_of_sorted)) & available.gather(1, order)
    return torch.zeros_like(available).scatter_(1, order, picked_sorted)


def ranks(keys: torch.Tensor) -> torch.Tensor:
    """int64 ``(B, N)``: each key's position in its row sorted ascending (stable: ties keep their index order)."""
    order = torch.sort(keys, dim=1, stable=True).indices
    positions = torch.arange(keys.shape[1], device=keys.device).expand_as(order).contiguous()
    return torch.empty_like(order).scatter_(1, order, positions)
