"""Random batches in the batch schema (``pacofr.data.batch``), and a data module that replays them.

For measuring or testing the training step without reading shards: ``bench/train_step.py`` (on a bare GPU node
too) and the module tests. The values are random; the structure is the real one: an exact masked count per
image, covered patches inside the mask, region histograms that sum to one.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from pacofr.data.batch import PretrainBatch
from pacofr.data.format import NUM_LABELS, NUM_REGIONS
from pacofr.objectives.interface import PretrainObjective


def synthetic_batches(
    objective: PretrainObjective, batch: int, count: int, seed: int = 0, device: torch.device | str = "cpu"
) -> list[PretrainBatch]:
    """``count`` batches of ``batch`` images for ``objective`` (image, mask, covered, covered_patches,
    region_hist, seg)."""
    n, s = objective.num_patches, objective.img_size
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        order = torch.rand(batch, n, generator=gen).argsort(dim=1)
        mask = torch.zeros(batch, n, dtype=torch.bool).scatter_(1, order[:, : objective.num_masked], True)
        # the "covered component": the first few masked patches of each image (a subset of the mask)
        covered_patches = torch.zeros_like(mask).scatter_(1, order[:, : max(1, objective.num_masked // 8)], True)
        hist = torch.rand(batch, n, NUM_REGIONS, generator=gen).pow(4)
        out.append(
            {
                "image": torch.randn(batch, 3, s, s, generator=gen),
                "mask": mask,
                "covered": torch.randint(0, 6, (batch,), generator=gen),
                "covered_patches": covered_patches,
                "region_hist": hist / hist.sum(-1, keepdim=True),
                "seg": torch.randint(0, NUM_LABELS, (batch, s, s), generator=gen, dtype=torch.uint8),
            }
        )
    return [{k: v.to(device) for k, v in b.items()} for b in out]


class _Cycle(Dataset):
    def __init__(self, batches: list[dict], length: int):
        self.batches, self.length = batches, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return self.batches[i % len(self.batches)]


class PremadeBatches(L.LightningDataModule):
    """Replays ``batches`` in order, ``length`` batches per epoch (default: each once); ``batch_size`` is what
    the module's learning-rate scaling reads."""

    def __init__(self, batches: list[dict], length: int | None = None):
        super().__init__()
        self.batches, self.length = batches, length if length is not None else len(batches)
        self.batch_size = int(batches[0]["image"].shape[0])
        self.train_samples = self.length * self.batch_size  # one epoch: every replayed batch once

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Cycle(self.batches, self.length), batch_size=None, num_workers=0)
