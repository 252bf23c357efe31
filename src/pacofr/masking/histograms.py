"""Per-patch region histograms: the share of each region group's pixels in every patch.

The histograms are the parsing map one-hot over the 9 region groups of ``pacofr.data.format``,
average-pooled per patch. Done here with one ``bincount`` over ``(sample, patch, label)`` ids,
which is the same result as ``one_hot`` + ``avg_pool2d`` without materialising a 9-channel map
(several times faster on CPU, where the data workers build it per sample). On the CPU the count
runs in numpy (int32 ids, no int64 temporaries): about half the cost of the same ops in torch on
one 224 px map, which the data workers build for every sample.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from pacofr.data.format import LABEL_NAMES, NUM_LABELS, NUM_REGIONS, label_to_region_lut, patch_grid

_LABEL_TO_REGION = torch.tensor(label_to_region_lut(), dtype=torch.long)
_LABEL_TO_REGION_MATRIX_NP = np.eye(NUM_REGIONS, dtype=np.float32)[np.asarray(label_to_region_lut())]  # (19, 9)


def check_label_map(seg: torch.Tensor) -> torch.Tensor:
    """The map as int64 after checking its dtype and that every id is a known label.

    The range check reads the min/max back (a host sync): fine in data workers, where maps live.
    It also keeps the histogram's flat (patch, label) index from spilling into the next patch.
    """
    if seg.dtype.is_floating_point or seg.dtype.is_complex or seg.dtype == torch.bool:
        raise TypeError(f"label map must hold integer label ids, got dtype {seg.dtype}")
    seg = seg.long()
    if seg.numel():
        low, high = (int(v) for v in torch.aminmax(seg))
        _check_label_range(low, high)
    return seg


def _check_label_range(low: int, high: int) -> None:
    if low < 0 or high >= NUM_LABELS:
        raise ValueError(
            f"label map holds ids in [{low}, {high}] but the {NUM_LABELS} labels are 0..{NUM_LABELS - 1} "
            f"({', '.join(LABEL_NAMES)})"
        )


@lru_cache(maxsize=32)
def _pixel_patch_offset_np(rows: int, cols: int, patch_size: int) -> np.ndarray:
    """int32 ``(H, W)`` map of ``patch id * NUM_LABELS`` for every pixel (row-major patch ids), read-only."""
    ids = np.arange(rows * cols, dtype=np.int32).reshape(rows, 1, cols, 1) * NUM_LABELS
    out = np.ascontiguousarray(np.broadcast_to(ids, (rows, patch_size, cols, patch_size)))
    out = out.reshape(rows * patch_size, cols * patch_size)
    out.flags.writeable = False
    return out


def _cpu_region_counts(seg: torch.Tensor, rows: int, cols: int, patch_size: int) -> np.ndarray:
    """int64 ``(B * N, NUM_LABELS)`` label counts per patch of a CPU map ``(..., H, W)`` (numpy)."""
    if seg.dtype.is_floating_point or seg.dtype.is_complex or seg.dtype == torch.bool:
        raise TypeError(f"label map must hold integer label ids, got dtype {seg.dtype}")
    maps = seg.reshape(-1, *seg.shape[-2:]).numpy()
    batch, num_patches = maps.shape[0], rows * cols
    if maps.size:  # (an unsigned map needs no lower bound check)
        low = 0 if maps.dtype.kind == "u" else int(maps.min())
        _check_label_range(low, int(maps.max()))
    # uint8 maps (the data workers') + int32 offsets -> int32 ids in one pass, no int64 temporary;
    # one bincount per map keeps its temporaries in cache (faster than one count over the batch)
    offsets = _pixel_patch_offset_np(rows, cols, patch_size)
    counts = np.empty((batch, num_patches * NUM_LABELS), dtype=np.int64)
    for b in range(batch):
        counts[b] = np.bincount((maps[b] + offsets).reshape(-1), minlength=num_patches * NUM_LABELS)
    return counts.reshape(batch * num_patches, NUM_LABELS)


@lru_cache(maxsize=32)
def _pixel_patch_offset(rows: int, cols: int, patch_size: int, device: torch.device) -> torch.Tensor:
    """``(H, W)`` map of ``patch id * NUM_LABELS`` for every pixel (row-major patch ids)."""
    ids = torch.arange(rows * cols, device=device).reshape(rows, 1, cols, 1) * NUM_LABELS
    return ids.expand(rows, patch_size, cols, patch_size).reshape(rows * patch_size, cols * patch_size).contiguous()


@lru_cache(maxsize=8)
def _label_to_region_matrix(device: torch.device) -> torch.Tensor:
    """``(NUM_LABELS, NUM_REGIONS)`` 0/1 matrix that sums label counts into region-group counts."""
    matrix = torch.zeros(NUM_LABELS, NUM_REGIONS, device=device)
    matrix[torch.arange(NUM_LABELS, device=device), _LABEL_TO_REGION.to(device)] = 1.0
    return matrix


def patch_region_histograms(seg: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Region-group histogram of every patch of a label map.

    Args:
        seg: integer label ids (CelebAMask-HQ order), shape ``(H, W)`` or ``(B, H, W)``, any device.
        patch_size: side of the square patches; H and W must be multiples of it.

    Returns:
        float32 ``(N, NUM_REGIONS)`` or ``(B, N, NUM_REGIONS)`` on seg's device,
        ``N = (H / p) * (W / p)`` in row-major patch order; entry ``[n, g]`` is the fraction of
        patch ``n``'s pixels in group ``g``, so every row sums to 1.
    """
    rows, cols = patch_grid(seg, patch_size)
    lead = seg.shape[:-2]
    num_patches = rows * cols
    if seg.device.type == "cpu":
        counts = _cpu_region_counts(seg, rows, cols, patch_size)
        hist = counts.astype(np.float32) @ _LABEL_TO_REGION_MATRIX_NP
        hist /= np.float32(patch_size * patch_size)
        return torch.from_numpy(hist).reshape(*lead, num_patches, NUM_REGIONS)
    seg = check_label_map(seg)
    batch = 1
    for size in lead:
        batch *= size
    # Count (sample, patch, label) triples in one bincount (cheaper than a per-pixel label->group
    # gather), then fold the 19 labels into the 9 groups with a tiny matmul.
    index = seg.reshape(batch, *seg.shape[-2:]) + _pixel_patch_offset(rows, cols, patch_size, seg.device)
    if batch > 1:
        index = index + torch.arange(batch, device=seg.device).reshape(batch, 1, 1) * (num_patches * NUM_LABELS)
    counts = torch.bincount(index.reshape(-1), minlength=batch * num_patches * NUM_LABELS)
    counts = counts.to(torch.float32).reshape(batch * num_patches, NUM_LABELS)
    hist = counts @ _label_to_region_matrix(seg.device)
    return (hist / float(patch_size * patch_size)).reshape(*lead, num_patches, NUM_REGIONS)
