"""The one batch schema of pretraining, and the masker type that fills its mask entries.

Every producer and consumer of a pretraining batch reads its keys from here: the maskers (which return a
:class:`MaskResult` per sample), the batch builder in the data workers, the synthetic batches of the tests and
benchmarks (``pacofr.training.synthetic_batches``) and the objectives (``pacofr.objectives``).

A batch as the objective sees it (after ``PretrainDataModule.to_model_input`` on the device), ``B`` images of
side ``S``, ``N = (S / p)^2`` patches in row-major order:

==================  ======================  =================================================================
key                 type                    meaning
==================  ======================  =================================================================
``image``           float32 (B, 3, S, S)    normalised pixels (``pacofr.data.transforms.normalize_images``)
``seg``             int64 (B, S, S)         face-parsing labels (``pacofr.data.format.LABEL_NAMES``)
``key``             list[str]               the samples' shard keys
``mask``            bool (B, N)             True = hidden from the encoder; exactly
                                            ``num_masked_patches(N, mask_ratio)`` per row
``covered``         int64 (B,)              the facial component the masker covered
                                            (``MASKABLE_COMPONENTS`` index) or ``NO_COVERED_GROUP``
``covered_patches`` bool (B, N)             the covered component's patches (all inside ``mask``)
``region_hist``     float32 (B, N, 9)       each patch's share of the nine regions (rows sum to 1)
``valid``           bool (B,)               validation only: False on padding that evens out the ranks
==================  ======================  =================================================================

The mask entries exist when the data module has a masker. The loaders yield ``image`` and ``seg`` as uint8
(a fraction of the bytes to collate and copy); the data module converts them on the device.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypedDict

import torch

NO_COVERED_GROUP = -1  # ``covered`` value of maskers that do not cover a facial component
MASK_KEYS = ("mask", "covered", "region_hist", "covered_patches")  # what a masker adds to a batch


class PretrainBatch(TypedDict, total=False):
    """A pretraining batch (see the module docstring for shapes and meaning)."""

    image: torch.Tensor
    seg: torch.Tensor
    key: list[str]
    mask: torch.Tensor
    covered: torch.Tensor
    covered_patches: torch.Tensor
    region_hist: torch.Tensor
    valid: torch.Tensor


def require(batch: PretrainBatch, *keys: str, who: str) -> None:
    """Raise a ``KeyError`` naming ``who`` needs which missing entries (and where they come from)."""
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(
            f"{who} needs the batch entries {missing}; they come from the data module's masker "
            f"(data.masker), which this batch was built without"
        )


def check_mask_ratio(mask_ratio: float) -> float:
    """``mask_ratio`` as a float after checking it lies in [0, 1) (1 would leave the encoder no token)."""
    ratio = float(mask_ratio)
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return ratio


def num_masked_patches(num_patches: int, mask_ratio: float) -> int:
    """Exact number of masked patches: Python's ``round(num_patches * mask_ratio)``.

    Every masker hides exactly this many patches, and the objectives gather exactly this many per sample.
    Python's round sends exact halves to the even integer: 196 patches at 0.75 -> 147, 10 at 0.25 -> 2
    (2.5 to even), 14 at 0.25 -> 4 (3.5 to even).
    """
    return int(round(num_patches * check_mask_ratio(mask_ratio)))


@dataclass
class MaskResult:
    """One sample's mask over the patch grid (row-major, ``N = (H / p) * (W / p)``)."""

    mask: torch.Tensor  # bool (N,), True = hidden from the encoder
    covered: int  # index into pacofr.data.format.MASKABLE_COMPONENTS, or NO_COVERED_GROUP
    region_hist: torch.Tensor  # float32 (N, NUM_REGIONS), each row sums to 1
    # bool (N,): the patches of the covered component (all masked); all False without one
    covered_patches: torch.Tensor | None = field(default=None)

    def __post_init__(self) -> None:
        if self.covered_patches is None:
            self.covered_patches = torch.zeros_like(self.mask)

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The batch entries of this sample (``MASK_KEYS``)."""
        return {
            "mask": self.mask,
            "covered": torch.tensor(self.covered, dtype=torch.long),
            "region_hist": self.region_hist,
            "covered_patches": self.covered_patches,
        }


class Masker(ABC):
    """Base of every masker: ``masker(seg, generator)`` with seg the augmented label map (H, W), integer
    ids of dtype ``label_dtype``. Masks are built per sample inside the data workers, after the joint
    augmentation, so that they stay aligned with the pixels and the parsing map the model sees.

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
