"""BEiT's blockwise masking: random rectangles of patches until the budget is reached.

Follows BEiT's ``MaskingGenerator``: each block has a target area drawn uniformly in
``[min_block_patches, remaining budget]`` and a log-uniform aspect ratio in
``[min_aspect, 1 / min_aspect]``; a block is accepted only if it adds at least one new patch and
does not overshoot the budget; ten failed tries end the loop. BEiT may stop a few patches short;
here the shortfall is topped up with uniformly random patches so the count is always exact.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pacofr.data.batch import NO_COVERED_GROUP, Masker, MaskResult, check_mask_ratio, num_masked_patches
from pacofr.masking.common import mask_random_extra, sample_histograms

_TRIES_PER_BLOCK = 10  # BEiT's value


class _Uniforms:
    """Uniform [0, 1) numbers drawn from a torch generator in chunks (one draw per number is slow)."""

    def __init__(self, generator: torch.Generator, chunk: int = 64) -> None:
        self._generator = generator
        self._chunk = chunk
        self._values: list[float] = []

    def __call__(self) -> float:
        if not self._values:
            self._values = torch.rand(self._chunk, generator=self._generator, dtype=torch.float64).tolist()
        return self._values.pop()


class BlockMasker(Masker):
    """Blockwise masking (BEiT baseline) with an exact count of ``round(N * mask_ratio)`` patches."""

    label_dtype = torch.uint8  # the map only feeds patch_region_histograms, which takes any integer dtype

    def __init__(
        self,
        patch_size: int = 16,
        mask_ratio: float = 0.75,
        min_block_patches: int = 16,
        max_block_patches: int | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
    ) -> None:
        self.patch_size = int(patch_size)
        self.mask_ratio = check_mask_ratio(mask_ratio)
        if min_block_patches < 1:
            raise ValueError(f"min_block_patches must be >= 1, got {min_block_patches}")
        if max_block_patches is not None and max_block_patches < min_block_patches:
            raise ValueError(f"max_block_patches={max_block_patches} < min_block_patches={min_block_patches}")
        max_aspect = 1.0 / min_aspect if max_aspect is None else max_aspect
        if not 0.0 < min_aspect <= max_aspect:
            raise ValueError(f"need 0 < min_aspect <= max_aspect, got {min_aspect}, {max_aspect}")
        self.min_block_patches = int(min_block_patches)
        self.max_block_patches = max_block_patches
        self.min_aspect = float(min_aspect)
        self.max_aspect = float(max_aspect)

    def __call__(self, seg: torch.Tensor, generator: torch.Generator) -> MaskResult:
        hist, (rows, cols) = sample_histograms(seg, self.patch_size)
        num_masked = num_masked_patches(rows * cols, self.mask_ratio)
        grid = self._blocks(rows, cols, num_masked, _Uniforms(generator))
        mask = torch.from_numpy(grid.reshape(-1))
        mask = mask_random_extra(mask, num_masked - int(mask.sum()), generator)
        return MaskResult(mask=mask, covered=NO_COVERED_GROUP, region_hist=hist)

    def _blocks(self, rows: int, cols: int, budget: int, uniform: _Uniforms) -> np.ndarray:
        grid = np.zeros((rows, cols), dtype=bool)
        log_aspect = (math.log(self.min_aspect), math.log(self.max_aspect))
        count = 0
        while count < budget:
            limit = budget - count
            if self.max_block_patches is not None:
                limit = min(limit, self.max_block_patches)
            added = 0
            for _ in range(_TRIES_PER_BLOCK):
                # Like BEiT, uniform(a, b) with a > b (budget nearly spent) draws from [b, a].
                area = self.min_block_patches + (limit - self.min_block_patches) * uniform()
                aspect = math.exp(log_aspect[0] + (log_aspect[1] - log_aspect[0]) * uniform())
                height = int(round(math.sqrt(area * aspect)))
                width = int(round(math.sqrt(area / aspect)))
                if not (0 < height < rows and 0 < width < cols):
                    continue
                top = min(int(uniform() * (rows - height + 1)), rows - height)
                left = min(int(uniform() * (cols - width + 1)), cols - width)
                block = grid[top : top + height, left : left + width]
                new = height * width - int(block.sum())
                if 0 < new <= limit:
                    block[...] = True
                    added = new
                    break
            if added == 0:
                break
            count += added
        return grid

    def __repr__(self) -> str:
        return (
            f"BlockMasker(patch_size={self.patch_size}, mask_ratio={self.mask_ratio}, "
            f"min_block_patches={self.min_block_patches}, min_aspect={self.min_aspect})"
        )
