"""Structured facial-region masking of PaCo-FR and the FSFM-style baseline (docs/method.md): FSFM's CRFR-P,
Cover a Random Facial Region, then Proportional masking of the rest.

Per sample:

1. **Components.** A patch *touches* a region group when the group's pixel share in the patch
   exceeds ``touch_threshold`` (default 0: any pixel). The maskable components are the groups
   brows, eyes, nose, mouth, hair, plus ``face_boundary``: the patches that touch skin AND touch
   hair-or-background (FSFM's definition: both kinds of pixels in the same patch). With
   ``boundary_neighbours=True`` a skin-touching patch also counts when one of its 4-neighbour
   patches touches hair or background (closes gaps where the contour runs along a patch edge).
2. **Cover.** Among the components that are present (>= 1 patch), have a positive probability and
   fit in the budget ``K = round(N * mask_ratio)`` (see :func:`num_masked_patches`), draw one with
   the configured probabilities (renormalised over those). Drawing among the fitting ones is the
   same distribution as "draw from the present ones, redraw if it does not fit". All its patches
   are masked, so ``covered != NO_COVERED_GROUP`` always means the component is fully hidden.
   If none qualifies, the sample falls back to random masking and reports ``NO_COVERED_GROUP``.
3. **Proportional fill.** The ``R = K - |covered|`` remaining masks go to the other patches in
   proportion to the size of each region group: every uncovered patch belongs to its dominant
   group (largest pixel share; ties to the lower group index), group ``g`` with ``n_g`` of the
   ``M`` uncovered patches gets ``R * n_g / M`` masks, rounded by systematic sampling (each
   group's fractional part becomes one extra mask with exactly that probability, and the quotas
   sum to ``R``), and its masked patches are drawn uniformly without replacement inside the
   group. The count is therefore exact by construction: no trimming step can unmask the cover.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from pacofr.data.batch import NO_COVERED_GROUP, Masker, MaskResult, check_mask_ratio, num_masked_patches
from pacofr.data.format import MASKABLE_COMPONENTS, NUM_REGIONS, REGION_IDS
from pacofr.masking.common import mask_random_extra, sample_histograms
from pacofr.masking.histograms import patch_grid, patch_region_histograms
from pacofr.masking.on_device import proportional_fill_rows as proportional_fill_rows_torch
from pacofr.masking.on_device import ranks, region_histograms, sequential_cumsum

FACE_BOUNDARY = "face_boundary"
_SKIN = REGION_IDS["skin"]
_HAIR = REGION_IDS["hair"]
_BACKGROUND = REGION_IDS["background"]
# Components that are plain region groups: their columns in MASKABLE_COMPONENTS order and their groups.
_LABEL_COMPONENT_COLUMNS = [ci for ci, name in enumerate(MASKABLE_COMPONENTS) if name != FACE_BOUNDARY]
_LABEL_COMPONENT_GROUPS = [REGION_IDS[MASKABLE_COMPONENTS[ci]] for ci in _LABEL_COMPONENT_COLUMNS]
_BOUNDARY_INDEX = MASKABLE_COMPONENTS.index(FACE_BOUNDARY)
assert len(_LABEL_COMPONENT_COLUMNS) + 1 == len(MASKABLE_COMPONENTS), "each component is a region group or the boundary"


def component_probabilities(probs: Mapping[str, float] | Sequence[float] | None) -> torch.Tensor:
    """float64 ``(len(MASKABLE_COMPONENTS),)`` weights from a name->weight mapping, a sequence in
    MASKABLE_COMPONENTS order, or None (uniform). Names left out of a mapping get weight 0."""
    if probs is None:
        weights = [1.0] * len(MASKABLE_COMPONENTS)
    elif isinstance(probs, Mapping):
        unknown = sorted(set(probs) - set(MASKABLE_COMPONENTS))
        if unknown:
            raise ValueError(f"unknown components {unknown}; choose from {list(MASKABLE_COMPONENTS)}")
        weights = [float(probs.get(name, 0.0)) for name in MASKABLE_COMPONENTS]
    else:
        weights = [float(p) for p in probs]
        if len(weights) != len(MASKABLE_COMPONENTS):
            raise ValueError(
                f"component_probs has {len(weights)} entries, expected {len(MASKABLE_COMPONENTS)} "
                f"(in the order {list(MASKABLE_COMPONENTS)})"
            )
    tensor = torch.tensor(weights, dtype=torch.float64)
    if not torch.isfinite(tensor).all() or (tensor < 0).any() or tensor.sum() <= 0:
        raise ValueError(f"component_probs must be finite, >= 0 and not all zero, got {weights}")
    return tensor / tensor.sum()


def component_patches(
    region_hist: np.ndarray,
    grid: tuple[int, int],
    touch_threshold: float = 0.0,
    boundary_neighbours: bool = False,
) -> np.ndarray:
    """bool ``(..., N, len(MASKABLE_COMPONENTS))``: which patches touch each maskable component
    (``region_hist`` is ``(..., N, NUM_REGIONS)``: one map or a batch of them)."""
    touches = region_hist > touch_threshold
    out = np.empty((*region_hist.shape[:-1], len(MASKABLE_COMPONENTS)), dtype=bool)
    out[..., _LABEL_COMPONENT_COLUMNS] = touches[..., _LABEL_COMPONENT_GROUPS]
    hair_or_background = touches[..., _HAIR] | touches[..., _BACKGROUND]
    if boundary_neighbours:
        grid_map = hair_or_background.reshape(*hair_or_background.shape[:-1], *grid)
        near = grid_map.copy()
        near[..., 1:, :] |= grid_map[..., :-1, :]
        near[..., :-1, :] |= grid_map[..., 1:, :]
        near[..., :, 1:] |= grid_map[..., :, :-1]
        near[..., :, :-1] |= grid_map[..., :, 1:]
        hair_or_background = near.reshape(hair_or_background.shape)
    out[..., _BOUNDARY_INDEX] = touches[..., _SKIN] & hair_or_background
    return out


def component_patches_torch(
    region_hist: torch.Tensor, grid: tuple[int, int], touch_threshold: float = 0.0, boundary_neighbours: bool = False
) -> torch.Tensor:
    """:func:`component_patches` of a torch ``(B, N, NUM_REGIONS)`` batch, on its device."""
    touches = region_hist > touch_threshold
    columns: list[torch.Tensor] = [touches[..., group] for group in _LABEL_COMPONENT_GROUPS]
    hair_or_background = touches[..., _HAIR] | touches[..., _BACKGROUND]
    if boundary_neighbours:
        grid_map = hair_or_background.reshape(*hair_or_background.shape[:-1], *grid)
        near = grid_map.clone()
        near[..., 1:, :] |= grid_map[..., :-1, :]
        near[..., :-1, :] |= grid_map[..., 1:, :]
        near[..., :, 1:] |= grid_map[..., :, :-1]
        near[..., :, :-1] |= grid_map[..., :, 1:]
        hair_or_background = near.reshape(hair_or_background.shape)
    columns.insert(_BOUNDARY_INDEX, touches[..., _SKIN] & hair_or_background)
    return torch.stack(columns, dim=-1)


def proportional_quotas(sizes: np.ndarray, budget: int, offset: int) -> np.ndarray:
    """int64 quotas ``q_g`` with ``sum(q) == budget``, ``E[q_g] = budget * n_g / M``, ``q_g <= n_g``.

    Integer systematic sampling: ``q_g = floor(budget * n_g / M)`` plus one with probability equal
    to the fractional part, decided by one shared offset (uniform in ``[0, M)``, ``M = sum(sizes)``)
    so the extras sum exactly. Requires ``0 <= budget <= M``.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    total = int(sizes.sum())
    if not 0 <= budget <= total:
        raise ValueError(f"cannot spread {budget} masks over {total} patches")
    if total == 0:
        return np.zeros_like(sizes)
    if not 0 <= offset < total:
        raise ValueError(f"offset must be in [0, {total}), got {offset}")
    scaled = sizes * budget
    reached = ((scaled % total).cumsum() + offset) // total  # extras handed out up to each group
    extras = reached.copy()
    extras[1:] -= reached[:-1]  # the first group's count starts from offset // total == 0
    return scaled // total + extras


def proportional_fill(
    available: np.ndarray, dominant_group: np.ndarray, budget: int, uniforms: np.ndarray
) -> np.ndarray:
    """bool ``(N,)``: ``budget`` of the ``available`` patches, spread over their dominant groups in
    proportion to the groups' sizes, drawn uniformly without replacement inside each group.

    ``uniforms``: ``N + 1`` numbers uniform in [0, 1) (the randomness, drawn by the caller).
    """
    num_patches = available.shape[0]
    sizes = np.bincount(dominant_group[available], minlength=NUM_REGIONS)
    total = int(sizes.sum())
    offset = min(int(uniforms[0] * total), total - 1) if total else 0
    quotas = proportional_quotas(sizes, budget, offset)
    # Sort available patches by (group, random key): the first q_g of group g are its picks.
    keys = np.where(available, dominant_group + uniforms[1:], NUM_REGIONS + 1.0)  # unavailable sort last
    order = np.argsort(keys, kind="stable")
    group_of_sorted = dominant_group[order]
    group_start = sizes.cumsum() - sizes
    rank_in_group = np.arange(num_patches) - group_start[group_of_sorted]
    picked_sorted = (rank_in_group < quotas[group_of_sorted]) & available[order]
    picked = np.zeros(num_patches, dtype=bool)
    picked[order[picked_sorted]] = True
    return picked


def proportional_fill_rows(
    available: np.ndarray, dominant_group: np.ndarray, budgets: np.ndarray, uniforms: np.ndarray
) -> np.ndarray:
    """:func:`proportional_fill` for ``B`` rows at once: ``available``/``dominant_group`` ``(B, N)``,
    ``budgets`` ``(B,)``, ``uniforms`` ``(B, N + 1)``; row ``b`` equals ``proportional_fill`` of row ``b``."""
    rows, num_patches = available.shape
    in_group = (dominant_group[..., None] == np.arange(NUM_REGIONS)) & available[..., None]
    sizes = in_group.sum(axis=1)  # (B, NUM_REGIONS)
    total = sizes.sum(axis=1)
    if ((budgets < 0) | (budgets > total)).any():
        bad = int(np.flatnonzero((budgets < 0) | (budgets > total))[0])
        raise ValueError(f"cannot spread {int(budgets[bad])} masks over {int(total[bad])} patches")
    divisor = np.maximum(total, 1)  # rows without patches have budget 0: every quota is 0
    offset = np.minimum((uniforms[:, 0] * total).astype(np.int64), np.maximum(total - 1, 0))
    scaled = sizes * budgets[:, None]
    reached = ((scaled % divisor[:, None]).cumsum(axis=1) + offset[:, None]) // divisor[:, None]
    extras = reached.copy()
    extras[:, 1:] -= reached[:, :-1]
    quotas = scaled // divisor[:, None] + extras
    keys = np.where(available, dominant_group + uniforms[:, 1:], NUM_REGIONS + 1.0)
    order = np.argsort(keys, axis=1, kind="stable")
    group_of_sorted = np.take_along_axis(dominant_group, order, axis=1)
    group_start = sizes.cumsum(axis=1) - sizes
    rank_in_group = np.arange(num_patches) - np.take_along_axis(group_start, group_of_sorted, axis=1)
    picked_sorted = (rank_in_group < np.take_along_axis(quotas, group_of_sorted, axis=1)) & np.take_along_axis(
        available, order, axis=1
    )
    picked = np.zeros((rows, num_patches), dtype=bool)
    np.put_along_axis(picked, order, picked_sorted, axis=1)
    return picked


class StructuredMasker(Masker):
    """Cover one random facial component entirely, then mask the rest proportionally (see module doc)."""

    label_dtype = torch.uint8  # the map only feeds patch_region_histograms, which takes any integer dtype

    def __init__(
        self,
        patch_size: int = 16,
        mask_ratio: float = 0.75,
        component_probs: Mapping[str, float] | Sequence[float] | None = None,
        touch_threshold: float = 0.0,
        boundary_neighbours: bool = False,
        per_batch_component: bool = False,
    ) -> None:
        """``per_batch_component``: FSFM's CRFR-P draws one facial component per batch and covers it in every
        image of the batch; a sample where it does not fit the budget draws its own. Off: one draw per sample.
        (A data worker's batch is the batch here; a single ``__call__`` is a batch of one.)"""
        self.per_batch_component = bool(per_batch_component)
        self.patch_size = int(patch_size)
        self.mask_ratio = check_mask_ratio(mask_ratio)
        if not 0.0 <= touch_threshold < 1.0:
            raise ValueError(f"touch_threshold is a pixel share in [0, 1), got {touch_threshold}")
        self.touch_threshold = float(touch_threshold)
        self.boundary_neighbours = bool(boundary_neighbours)
        self.component_probs = component_probabilities(component_probs)
        self._probs = self.component_probs.numpy()

    def __call__(self, seg: torch.Tensor, generator: torch.Generator) -> MaskResult:
        hist, grid = sample_histograms(seg, self.patch_size)
        num_patches = hist.shape[0]
        budget = num_masked_patches(num_patches, self.mask_ratio)
        # The per-patch logic runs in numpy: on ~200-element arrays its per-op cost is several
        # times below torch's, which keeps a call well under a millisecond in the data workers.
        hist_np = hist.numpy()
        components = component_patches(hist_np, grid, self.touch_threshold, self.boundary_neighbours)
        sizes = components.sum(axis=0)
        eligible = (sizes > 0) & (sizes <= budget) & (self._probs > 0)
        if not eligible.any():
            nothing = torch.zeros(num_patches, dtype=torch.bool)
            mask = mask_random_extra(nothing, budget, generator)
            return MaskResult(mask=mask, covered=NO_COVERED_GROUP, region_hist=hist, covered_patches=nothing)

        uniforms = torch.rand(num_patches + 2, generator=generator, dtype=torch.float64).numpy()
        cdf = np.cumsum(np.where(eligible, self._probs, 0.0))
        covered = min(int(np.searchsorted(cdf, uniforms[0] * cdf[-1], side="right")), len(cdf) - 1)
        covered_patches = components[:, covered].copy()
        remaining = budget - int(sizes[covered])
        dominant_group = hist_np.argmax(axis=1)  # first maximum on ties
        fill = proportional_fill(~covered_patches, dominant_group, remaining, uniforms[1:])
        mask = covered_patches | fill
        if int(mask.sum()) != budget:  # cheap guard: the model gathers exactly `budget` patches
            raise RuntimeError(f"structured masker produced {int(mask.sum())} masked patches, expected {budget}")
        return MaskResult(
            mask=torch.from_numpy(mask),
            covered=covered,
            region_hist=hist,
            covered_patches=torch.from_numpy(covered_patches),
        )

    def batch(self, segs: torch.Tensor, generators: Sequence[torch.Generator]) -> dict[str, torch.Tensor]:
        """The per-sample results for ``B`` maps ``(B, H, W)``, map ``b`` drawn from ``generators[b]``, stacked
        (``as_dict`` keys, each ``(B, ...)``) — the same numbers as ``B`` calls (unless ``per_batch_component``),
        with the per-patch logic vectorised over the batch (the data workers' per-call overhead was most of the
        masker's cost)."""
        if segs.dim() != 3 or len(generators) != segs.shape[0]:
            raise ValueError(f"need (B, H, W) maps and B generators, got {tuple(segs.shape)} and {len(generators)}")
        hist = patch_region_histograms(segs, self.patch_size)  # (B, N, NUM_REGIONS)
        grid = patch_grid(segs, self.patch_size)
        count, num_patches = hist.shape[0], hist.shape[1]
        budget = num_masked_patches(num_patches, self.mask_ratio)
        hist_np = hist.numpy()
        components = component_patches(hist_np, grid, self.touch_threshold, self.boundary_neighbours)
        sizes = components.sum(axis=1)  # (B, C)
        eligible = (sizes > 0) & (sizes <= budget) & (self._probs > 0)
        has_cover = eligible.any(axis=1)
        mask = np.zeros((count, num_patches), dtype=bool)
        covered_patches = np.zeros((count, num_patches), dtype=bool)
        covered = np.full(count, NO_COVERED_GROUP, dtype=np.int64)
        rows = np.flatnonzero(has_cover)
        if rows.size:
            # one draw per sample from its own generator, exactly as __call__ draws it
            uniforms = torch.stack(
                [torch.rand(num_patches + 2, generator=generators[b], dtype=torch.float64) for b in rows.tolist()]
            ).numpy()
            cdf = np.where(eligible[rows], self._probs, 0.0).cumsum(axis=1)
            # searchsorted(cdf, u * cdf[-1], side="right") per row = how many cdf entries are <= the target
            chosen = np.minimum((cdf <= (uniforms[:, 0] * cdf[:, -1])[:, None]).sum(axis=1), cdf.shape[1] - 1)
            if self.per_batch_component:
                # the first coverable sample's draw over the probabilities alone names the batch's component
                batch_cdf = np.cumsum(self._probs)
                shared = min(
                    int(np.searchsorted(batch_cdf, uniforms[0, 0] * batch_cdf[-1], side="right")), len(batch_cdf) - 1
                )
                chosen = np.where(eligible[rows, shared], shared, chosen)
            cover = components[rows, :, chosen]  # (R, N)
            remaining = budget - sizes[rows, chosen]
            fill = proportional_fill_rows(~cover, hist_np[rows].argmax(axis=2), remaining, uniforms[:, 1:])
            mask[rows] = cover | fill
            covered_patches[rows] = cover
            covered[rows] = chosen
            counts = mask[rows].sum(axis=1)
            if (counts != budget).any():  # cheap guard: the model gathers exactly `budget` patches
                raise RuntimeError(f"structured masker produced {counts.tolist()} masked patches, expected {budget}")
        out = {
            "mask": torch.from_numpy(mask),
            "covered": torch.from_numpy(covered),
            "region_hist": hist,
            "covered_patches": torch.from_numpy(covered_patches),
        }
        for b in np.flatnonzero(~has_cover).tolist():  # no component fits: random masking, drawn as __call__ does
            out["mask"][b] = mask_random_extra(torch.zeros(num_patches, dtype=torch.bool), budget, generators[b])
        return out

    # --- masks on the device (pacofr.masking.on_device) ------------------------------------------------------
    def draws(self, generator: torch.Generator, num_patches: int) -> dict[str, torch.Tensor]:
        """The random numbers :meth:`batch` would draw for one sample from its fresh ``generator``: ``cover``
        float64 ``(N + 2,)`` (the component and the proportional fill), and ``fallback`` float32 ``(N,)`` (the
        random masking of a sample where no component fits), both from the generator's starting state, since
        which one the sample uses is known only from its map."""
        state = generator.get_state()
        cover = torch.rand(num_patches + 2, generator=generator, dtype=torch.float64)
        generator.set_state(state)
        return {"cover": cover, "fallback": torch.rand(num_patches, generator=generator)}

    def batch_from_draws(self, segs: torch.Tensor, draws: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """:meth:`batch`'s entries from checked maps ``(B, H, W)`` and the stacked :meth:`draws` ``(B, ...)``, on
        the maps' device, without a host sync (so without :meth:`batch`'s count guard: the count is exact by
        construction, and tested)."""
        if segs.dim() != 3:
            raise ValueError(f"need (B, H, W) maps, got {tuple(segs.shape)}")
        hist = region_histograms(segs, self.patch_size)  # (B, N, NUM_REGIONS)
        grid = patch_grid(segs, self.patch_size)
        count, num_patches = hist.shape[0], hist.shape[1]
        budget = num_masked_patches(num_patches, self.mask_ratio)
        device = segs.device
        uniforms, fallback = draws["cover"].to(device), draws["fallback"].to(device)
        components = component_patches_torch(hist, grid, self.touch_threshold, self.boundary_neighbours)
        sizes = components.sum(dim=1)  # (B, C)
        probs = self.component_probs.to(device)
        eligible = (sizes > 0) & (sizes <= budget) & (probs > 0)
        has_cover = eligible.any(dim=1)
        cdf = sequential_cumsum(torch.where(eligible, probs, 0.0))
        last = cdf.shape[1] - 1
        chosen = (cdf <= (uniforms[:, 0] * cdf[:, -1]).unsqueeze(1)).sum(dim=1).clamp(max=last)
        if self.per_batch_component:  # the first coverable sample's draw over the probabilities alone
            first = torch.argmax(has_cover.to(torch.uint8))  # first True (any row when none: then unused)
            batch_cdf = sequential_cumsum(probs.unsqueeze(0))[0]
            shared = (batch_cdf <= uniforms[first, 0] * batch_cdf[-1]).sum().clamp(max=last)
            chosen = torch.where(eligible.gather(1, shared.expand(count, 1)).squeeze(1), shared, chosen)
        cover = components.gather(2, chosen.view(count, 1, 1).expand(count, num_patches, 1)).squeeze(2)
        remaining = budget - sizes.gather(1, chosen.unsqueeze(1)).squeeze(1)
        fill = proportional_fill_rows_torch(~cover, hist.argmax(dim=2), remaining, uniforms[:, 1:])
        random = ranks(fallback) < budget  # mask_random_extra's draw: the budget smallest keys
        keep = has_cover.unsqueeze(1)
        return {
            "mask": torch.where(keep, cover | fill, random),
            "covered": torch.where(has_cover, chosen, NO_COVERED_GROUP),
            "region_hist": hist,
            "covered_patches": cover & keep,
        }

    def __repr__(self) -> str:
        probs = {name: round(float(p), 4) for name, p in zip(MASKABLE_COMPONENTS, self.component_probs)}
        return (
            f"StructuredMasker(patch_size={self.patch_size}, mask_ratio={self.mask_ratio}, component_probs={probs}, "
            f"touch_threshold={self.touch_threshold}, boundary_neighbours={self.boundary_neighbours}, "
            f"per_batch_component={self.per_batch_component})"
        )
