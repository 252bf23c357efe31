"""Frozen-encoder feature caching for linear/dense probes.

A probe's encoder is frozen and in eval mode, so when a sample's input is deterministic (no random
augmentation) its features are the same every epoch. :func:`cache_split` runs the encoder once over a
split and keeps, per sample, the features plus the task targets (everything but the image);
:class:`FeatureDataset` serves them, so the remaining epochs train (and validate) the head only,
without decoding, cropping or encoding an image again.

Which tasks benefit: every task with training data whose training inputs are deterministic, i.e.
parsing, landmarks and pose (all of the synthetic suite), and classification / attributes (RAF-DB,
CelebA attributes) only with ``data.augment: false`` (their random flips otherwise make each epoch's
input differ). Verification has no training. Fine-tuning never caches (the encoder changes).

The training order stays that of an uncached run (``EvalDataModule`` seeds its sampler from the run's
seed, not from the global RNG), so cached and uncached probes take the same steps. The cache lives in
host memory; with several devices every process encodes the whole split once (the sampler then hands
each its share, as for images).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)

FEATURES_KEY = "features"  # list of per-layer NCHW tensors (dense tasks)
POOLED_KEY = "pooled"  # (D,) pooled feature (global tasks)
INPUT_SIZE_KEY = "input_size"  # side of the image the features came from (heads scale to it)
GB = 1024**3


class FeatureDataset(Dataset):
    """Per-sample cached encoder output and targets: ``{"features": [C,h,w] per layer | "pooled": [D],
    "input_size": side, <target keys>}``; batches of it go where image batches went."""

    def __init__(self, columns: dict[str, Any], length: int):
        self.columns, self.length = columns, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {k: [t[index] for t in v] if isinstance(v, list) else v[index] for k, v in self.columns.items()}

    @property
    def nbytes(self) -> int:
        tensors = [t for v in self.columns.values() for t in (v if isinstance(v, list) else [v])]
        return sum(t.numel() * t.element_size() for t in tensors)


def is_cached_batch(batch: dict[str, Any]) -> bool:
    return INPUT_SIZE_KEY in batch and "image" not in batch


def _entry(encoded: tuple[list[torch.Tensor], torch.Tensor | None], batch: dict[str, Any]) -> dict[str, Any]:
    """One batch's cache columns (on the CPU): the encoder output plus every target of the batch."""
    feats, pooled = encoded
    out: dict[str, Any] = {k: v.cpu() for k, v in batch.items() if k != "image"}
    if pooled is None:
        out[FEATURES_KEY] = [f.detach().cpu() for f in feats]
    else:
        out[POOLED_KEY] = pooled.detach().cpu()
    out[INPUT_SIZE_KEY] = torch.full((batch["image"].shape[0],), batch["image"].shape[-1], dtype=torch.int64)
    return out


def _bytes_of(entry: dict[str, Any]) -> int:
    tensors = [t for v in entry.values() for t in (v if isinstance(v, list) else [v])]
    return sum(t.numel() * t.element_size() for t in tensors)


def cache_split(
    encode: Callable[[torch.Tensor], tuple[list[torch.Tensor], torch.Tensor | None]],
    loader: DataLoader,
    device: torch.device,
    limit_bytes: float | None = None,
    name: str = "train",
) -> FeatureDataset | None:
    """Encode every sample of ``loader`` (in order, no shuffle) once; None when the first batch shows
    that the whole split would take more than ``limit_bytes`` (None: no limit).

    ``encode`` runs under ``torch.no_grad`` and whatever autocast context the caller set, so the
    cached features are exactly what the training step would have computed (same dtype too).
    """
    n = len(loader.dataset)  # type: ignore[arg-type]
    parts: list[dict[str, Any]] = []
    with torch.no_grad():
        for batch in loader:
            image = batch["image"].to(device, non_blocking=True)
            parts.append(_entry(encode(image), batch))
            if len(parts) == 1 and limit_bytes is not None:
                estimate = _bytes_of(parts[0]) / batch["image"].shape[0] * n
                if estimate > limit_bytes:
                    log.info(
                        "not caching %s features: %.2f GB for %d samples > the %.2f GB limit (cache_max_gb)",
                        name,
                        estimate / GB,
                        n,
                        limit_bytes / GB,
                    )
                    return None
    columns: dict[str, Any] = {}
    for key, first in parts[0].items():
        if isinstance(first, list):
            columns[key] = [torch.cat([p[key][i] for p in parts]) for i in range(len(first))]
        else:
            columns[key] = torch.cat([p[key] for p in parts])
    dataset = FeatureDataset(columns, n)
    log.info("cached %s features: %d samples, %.1f MB", name, n, dataset.nbytes / 2**20)
    return dataset
