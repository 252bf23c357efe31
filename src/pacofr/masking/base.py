"""What every masker returns, and the call signature the data workers use.

Masks are built per sample inside the data workers, after the joint augmentation, so that they
stay aligned with the pixels and the parsing map the model sees.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
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
    """Base of every masker: ``masker(seg, generator)`` with seg the augmented label map (H, W), integer
    ids of dtype ``label_dtype``.

    A base class (not a Protocol) so configs can name any subclass by ``class_path``.
    """

    patch_size: int
    mask_ratio: float
    # dtype of the label map the data workers pass in: int64 by default (what ``seg`` means in the batch);
    # a masker whose ops take any integer map can say uint8 (the decoder's dtype) and spare a conversion.
    label_dtype: torch.dtype = torch.int64

    @abstractmethod
    def __call__(self, seg: torch.Tensor, generator: torch.Generator) -> MaskResult: ...

    def batch(self, segs: torch.Tensor, generators: Sequence[torch.Generator]) -> dict[str, torch.Tensor]:
        """Masks of ``B`` maps ``(B, H, W)``, map ``b`` drawn from ``generators[b]``, as stacked ``as_dict``
        entries ``(B, ...)``: by definition the per-sample calls; a masker may vectorise it (same numbers)."""
        results = [self(seg, generator).as_dict() for seg, generator in zip(segs, generators, strict=True)]
        return {name: torch.stack([r[name] for r in results]) for name in results[0]}
