"""What every masker returns, and the call signature the data workers use.

Masks are built per sample inside the data workers, after the joint augmentation, so that they
stay aligned with the pixels and the parsing map the model sees.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

NO_COVERED_GROUP = -1  # ``covered`` value of maskers that do not cover a facial component


@dataclass
class MaskResult:
    """One sample's mask over the patch grid (row-major, ``N = (H / p) * (W / p)``)."""

    mask: torch.Tensor  # bool (N,), True = hidden from the encoder
    covered: int  # index into pacofr.data.format.MASKABLE_COMPONENTS, or NO_COVERED_GROUP
    region_hist: torch.Tensor  # float32 (N, NUM_REGIONS), each row sums to 1

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {
            "mask": self.mask,
            "covered": torch.tensor(self.covered, dtype=torch.long),
            "region_hist": self.region_hist,
        }


class Masker(ABC):
    """Base of every masker: ``masker(seg, generator)`` with seg the augmented label map (H, W) int64.

    A base class (not a Protocol) so configs can name any subclass by ``class_path``.
    """

    patch_size: int
    mask_ratio: float

    @abstractmethod
    def __call__(self, seg: torch.Tensor, generator: torch.Generator) -> MaskResult: ...
