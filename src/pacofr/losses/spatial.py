"""Spatial-consistency losses of PaCo-FR (the equations and defaults are in docs/method.md).

Main variant, :func:`spatial_consistency_loss`: a light head (owned by the model) predicts
every patch's region distribution ``q = softmax(region_logits)``; the target is the patch's
region histogram ``r`` from the parsing map. Two terms:

* **region term**: ``KL(r || q)`` per patch, averaged over all patches. This is the soft-target
  cross-entropy ``CE(r, q)`` minus the target entropy ``H(r)``, which does not depend on the
  prediction: same gradient, but exactly 0 when ``q == r``.
* **geometry term**: for every pair ``(a, b)`` of groups present in the sample (``r`` mass of at
  least ``min_group_mass`` patches), ``||(mu_hat_a - mu_hat_b) - (mu_a - mu_b)||_1`` where ``mu_g``
  is group ``g``'s centroid on the patch grid weighted by ``r[:, g]`` and ``mu_hat_g`` the same
  weighted by ``q[:, g]``. Coordinates are patch centres normalised to [0, 1] (``x = (col + 0.5) /
  cols``, ``y = (row + 0.5) / rows``) so the weight does not depend on the grid size. Summed over a
  sample's pairs (``pair_reduction="sum"``, as the method describes it; ``"mean"`` averages them, which
  divides the term by the number of pairs, 36 for nine groups), then averaged over the samples that have at
  least one pair. It measures the relative
  layout of the groups: moving one part relative to the others grows it, while a part-preserving
  shift of the whole face only registers through the background group, which fills what the face
  leaves (the region term catches any shift).

Alternative behind a switch, :func:`affinity_consistency_loss`: match the cosine-affinity matrix
of student tokens (masked view) to that of EMA-teacher tokens (full view).

All losses compute in float32, use no boolean indexing and no ``.item()`` (torch.compile-friendly).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pacofr.losses.sides import split_sides


def patch_centres(rows: int, cols: int, device: torch.device | None = None) -> torch.Tensor:
    """float32 ``(rows * cols, 2)`` patch centres ``(x, y)`` in [0, 1], row-major like the patches."""
    ys = (torch.arange(rows, device=device, dtype=torch.float32) + 0.5) / rows
    xs = (torch.arange(cols, device=device, dtype=torch.float32) + 0.5) / cols
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=-1)


def _grid_size(num_patches: int, grid_size: tuple[int, int] | None) -> tuple[int, int]:
    if grid_size is not None:
        rows, cols = grid_size
        if rows * cols != num_patches:
            raise ValueError(f"grid_size {grid_size} does not hold {num_patches} patches")
        return rows, cols
    side = int(round(num_patches**0.5))
    if side * side != num_patches:
        raise ValueError(f"{num_patches} patches is not a square grid: pass grid_size=(rows, cols)")
    return side, side


def group_centroids(weights: torch.Tensor, centres: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``(B, G, 2)`` weighted centroids of each group from per-patch weights ``(B, N, G)``."""
    mass = weights.sum(dim=1).clamp_min(eps)  # (B, G)
    return torch.einsum("bng,nc->bgc", weights, centres) / mass.unsqueeze(-1)


def spatial_consistency_loss(
    region_logits: torch.Tensor,
    region_hist: torch.Tensor,
    centroid_weight: float = 1.0,
    min_group_mass: float = 0.5,
    grid_size: tuple[int, int] | None = None,
    patch_weight: torch.Tensor | None = None,
    pair_reduction: str = "sum",
    sides: bool = False,
) -> dict[str, torch.Tensor]:
    """Region-distribution + part-geometry loss (see module doc).

    Args:
        region_logits: ``(B, N, G)`` the head's logits (any float dtype).
        region_hist: ``(B, N, G)`` target histograms, rows summing to 1 (the batch's ``region_hist``).
        centroid_weight: lambda of the geometry term.
        min_group_mass: a group is present in a sample when its ``r`` mass is at least this many
            patches' worth of pixels (0.5 = half a patch).
        grid_size: ``(rows, cols)`` of the patch grid; None means square.
        patch_weight: optional ``(B, N)`` 0/1 (or bool): the patches that count, in both terms (the region
            term averages over them; the centroids are taken over them, predicted and target alike).
        pair_reduction: ``sum`` or ``mean`` over a sample's group pairs.
        sides: the geometry term keeps left and right parts apart (``pacofr.losses.sides``: twelve groups).

    Returns:
        ``{"loss": region + centroid_weight * centroid, "region": KL term, "centroid": geometry term}``.
    """
    if region_logits.shape != region_hist.shape or region_logits.dim() != 3:
        raise ValueError(
            f"region_logits and region_hist must both be (B, N, G), got "
            f"{tuple(region_logits.shape)} and {tuple(region_hist.shape)}"
        )
    if pair_reduction not in ("sum", "mean"):
        raise ValueError(f"pair_reduction must be 'sum' or 'mean', got {pair_reduction!r}")
    rows, cols = _grid_size(region_logits.shape[1], grid_size)
    log_q = F.log_softmax(region_logits.float(), dim=-1)
    r = region_hist.float()
    w = None if patch_weight is None else patch_weight.to(torch.float32).unsqueeze(-1)  # (B, N, 1)

    # KL(r || q) = sum_g r (log r - log q); terms with r = 0 are 0 (also when log q = -inf).
    positive = r > 0
    pointwise = torch.where(positive, r * (torch.log(r.clamp_min(1e-30)) - log_q), torch.zeros_like(r))
    per_patch = pointwise.sum(dim=-1)
    region = per_patch.mean() if w is None else (per_patch * w[..., 0]).sum() / w.sum().clamp_min(1.0)

    centres = patch_centres(rows, cols, device=r.device)
    q = log_q.exp()
    if w is not None:
        r, q = r * w, q * w  # only the counted patches place the groups
    if sides:
        r, q = split_sides(r, (rows, cols)), split_sides(q, (rows, cols))
    mu = group_centroids(r, centres)  # (B, G, 2)
    mu_hat = group_centroids(q, centres)
    offsets = mu.unsqueeze(2) - mu.unsqueeze(1)  # (B, G, G, 2): mu_a - mu_b
    offsets_hat = mu_hat.unsqueeze(2) - mu_hat.unsqueeze(1)
    pair_error = (offsets_hat - offsets).abs().sum(dim=-1)  # (B, G, G), L1 over (x, y)

    present = r.sum(dim=1) >= min_group_mass  # (B, G)
    num_groups = r.shape[-1]
    upper = torch.ones(num_groups, num_groups, dtype=torch.bool, device=r.device).triu(diagonal=1)
    pairs = present.unsqueeze(2) & present.unsqueeze(1) & upper  # each unordered pair once
    pair_count = pairs.sum(dim=(1, 2))
    per_sample = torch.where(pairs, pair_error, torch.zeros_like(pair_error)).sum(dim=(1, 2))
    if pair_reduction == "mean":
        per_sample = per_sample / pair_count.clamp_min(1)
    has_pairs = pair_count > 0
    centroid = per_sample.sum() / has_pairs.sum().clamp_min(1)

    return {"loss": region + centroid_weight * centroid, "region": region, "centroid": centroid}


def affinity_consistency_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mode: str = "mse",
    temperature: float = 0.1,
) -> torch.Tensor:
    """Match the student's token cosine-affinity matrix to the (EMA) teacher's.

    Args:
        student: ``(B, N, D)`` tokens of the masked view (gradients flow).
        teacher: ``(B, N, D)`` tokens of the full view; detached here, no gradient.
        mode: ``"mse"``: mean squared difference of the ``(B, N, N)`` cosine matrices;
            ``"kl"``: per row, ``KL(softmax(A_t / T) || softmax(A_s / T))`` without the diagonal
            (always 1 in both, it would swamp the row at small T), averaged over rows.
        temperature: T of the ``"kl"`` mode.

    Returns a float32 scalar, 0 when the two affinity matrices agree.
    """
    if student.shape != teacher.shape or student.dim() != 3:
        raise ValueError(
            f"student and teacher must both be (B, N, D), got {tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.detach().float(), dim=-1)
    affinity_s = s @ s.transpose(1, 2)
    affinity_t = t @ t.transpose(1, 2)
    if mode == "mse":
        return (affinity_s - affinity_t).square().mean()
    if mode == "kl":
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        num_tokens = student.shape[1]
        if num_tokens < 2:
            raise ValueError("the 'kl' affinity loss needs at least 2 tokens per sample")
        off_diagonal = ~torch.eye(num_tokens, dtype=torch.bool, device=s.device)
        # The diagonal is pushed to -inf (probability 0) and its KL terms zeroed explicitly.
        logits_s = (affinity_s / temperature).masked_fill(~off_diagonal, float("-inf"))
        logits_t = (affinity_t / temperature).masked_fill(~off_diagonal, float("-inf"))
        log_p_s = F.log_softmax(logits_s, dim=-1)
        log_p_t = F.log_softmax(logits_t, dim=-1)
        pointwise = torch.where(off_diagonal, log_p_t.exp() * (log_p_t - log_p_s), torch.zeros_like(log_p_s))
        return pointwise.sum(dim=-1).mean()
    raise ValueError(f"unknown affinity mode {mode!r}; choose 'mse' or 'kl'")
