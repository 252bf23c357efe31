"""Left and right parts apart, for the spatial loss's geometry term.

The nine region groups put both eyes (brows, ears) in one group, so the distance between the two eyes never
enters a centroid. pacofr's crops are aligned (eyes level, the face centred: ``data_prep/align.py``), so the
subject's left and right parts lie on either side of the crop's vertical midline. ``split_sides`` splits each
two-sided group's per-patch mass by the patch's side of that line (a patch on the line gives half to each):
the nine groups become twelve, e.g. eyes (image left) and eyes (image right), and their centroids carry the eye
separation. The same split is applied to the target and the prediction.
"""

from __future__ import annotations

import torch

from pacofr.data.format import REGION_IDS

SIDED_GROUPS = ("brows", "eyes", "ears")  # groups whose labels come in a left and a right part
# Their group ids are consecutive, so the index tensor is an ``arange`` made on the weights' device (a kernel with
# two numbers as arguments) instead of a tensor from a Python list (a blocking host-to-device copy every step).
_SIDED_FIRST = REGION_IDS[SIDED_GROUPS[0]]
if [REGION_IDS[g] for g in SIDED_GROUPS] != list(range(_SIDED_FIRST, _SIDED_FIRST + len(SIDED_GROUPS))):
    raise AssertionError(f"the sided groups {SIDED_GROUPS} must have consecutive region ids")


def side_weights(cols: int, device: torch.device | None = None) -> torch.Tensor:
    """(cols,) share of each patch column on the image's left of the midline (1, 0, or 0.5 on the line)."""
    centre = (torch.arange(cols, device=device, dtype=torch.float32) + 0.5) / cols
    return torch.where(centre < 0.5, 1.0, torch.where(centre > 0.5, 0.0, 0.5))


def split_sides(weights: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """(B, N, 9) per-patch group weights -> (B, N, 12): the two-sided groups' image-right halves appended."""
    rows, cols = grid_size
    left = side_weights(cols, weights.device).repeat(rows).view(1, -1, 1)  # (1, N, 1), row-major patches
    sided = torch.arange(_SIDED_FIRST, _SIDED_FIRST + len(SIDED_GROUPS), device=weights.device)  # int64, as before
    mass = weights.index_select(-1, sided)  # (B, N, 3)
    kept = weights.index_copy(-1, sided, mass * left)
    return torch.cat([kept, mass * (1.0 - left)], dim=-1)
