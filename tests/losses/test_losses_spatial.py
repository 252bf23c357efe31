"""Spatial-consistency loss (region KL + part-geometry) and the EMA-affinity variant."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pacofr.data.format import NUM_REGIONS, REGION_IDS
from pacofr.losses.spatial import affinity_consistency_loss, patch_centres, spatial_consistency_loss

R = REGION_IDS
ROWS = COLS = 12


def part_map(nose_dx: int = 0, all_dx: int = 0) -> torch.Tensor:
    """(ROWS, COLS) region-group ids of a blocky face; the nose or the whole face can be shifted right."""
    grid = torch.full((ROWS, COLS), R["background"], dtype=torch.long)
    grid[1:3, 1 + all_dx : 9 + all_dx] = R["hair"]
    grid[3:11, 1 + all_dx : 9 + all_dx] = R["skin"]
    grid[4, 2 + all_dx : 4 + all_dx] = R["eyes"]
    grid[4, 6 + all_dx : 8 + all_dx] = R["eyes"]
    grid[6:8, 1 + all_dx + nose_dx : 5 + all_dx + nose_dx] = R["nose"]  # 4 wide: shifts up to 3 keep overlap
    grid[9, 3 + all_dx : 7 + all_dx] = R["mouth"]
    return grid


def one_hot(grid: torch.Tensor) -> torch.Tensor:
    return F.one_hot(grid.reshape(1, -1), NUM_REGIONS).float()  # (1, N, G)


def smoothed_logits(grid: torch.Tensor, confidence: float = 0.9) -> torch.Tensor:
    return torch.log(confidence * one_hot(grid) + (1 - confidence) / NUM_REGIONS)


def test_zero_when_prediction_equals_target() -> None:
    target = one_hot(part_map())
    target[0, 5] = torch.tensor([0.5, 0.25, 0, 0, 0, 0, 0, 0.25, 0])  # a mixed patch too
    logits = torch.log(target).requires_grad_(True)  # -inf where the target is 0
    out = spatial_consistency_loss(logits, target)
    assert abs(float(out["loss"].detach())) < 1e-6 and abs(float(out["centroid"].detach())) < 1e-6
    out["loss"].backward()
    assert torch.isfinite(logits.grad).all()


def test_region_term_is_cross_entropy_minus_target_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.softmax(torch.randn(2, 16, NUM_REGIONS, generator=g) * 3, dim=-1)
    logits = torch.randn(2, 16, NUM_REGIONS, generator=g)
    out = spatial_consistency_loss(logits, target)
    ce = -(target * torch.log_softmax(logits, dim=-1)).sum(-1).mean()
    entropy = -(target * target.log()).sum(-1).mean()
    torch.testing.assert_close(out["region"], ce - entropy)
    assert float(out["centroid"]) > 0


def test_geometry_term_hand_computed() -> None:
    # 1x4 grid: target nose at column 0, mouth at column 3; prediction swaps them.
    target = torch.zeros(1, 4, NUM_REGIONS)
    target[0, 0, R["nose"]] = target[0, 3, R["mouth"]] = 1.0
    target[0, 1:3, R["skin"]] = 1.0
    predicted = target.clone()
    predicted[0, 0], predicted[0, 3] = target[0, 3].clone(), target[0, 0].clone()
    out = spatial_consistency_loss(torch.log(predicted.clamp_min(1e-12)), target, grid_size=(1, 4))
    # centres x = 1/8, 3/8, 5/8, 7/8. Pairs: nose-mouth error |3/4 - (-3/4)| = 1.5; skin-nose and
    # skin-mouth: 0.75 each (skin stays at 1/2). Sum over the 3 pairs = 3.0, mean 1.0.
    assert math.isclose(float(out["centroid"]), 3.0, rel_tol=1e-4)
    mean = spatial_consistency_loss(
        torch.log(predicted.clamp_min(1e-12)), target, grid_size=(1, 4), pair_reduction="mean"
    )
    assert math.isclose(float(mean["centroid"]), 1.0, rel_tol=1e-4)


def test_patch_weight_keeps_the_uncounted_patches_out() -> None:
    """Only the counted patches enter either term: what the others' targets say changes nothing."""
    torch.manual_seed(0)
    logits = torch.randn(2, 16, NUM_REGIONS)
    target = torch.softmax(torch.randn(2, 16, NUM_REGIONS), -1)
    counted = torch.rand(2, 16) > 0.5
    other = torch.where(counted.unsqueeze(-1), target, torch.softmax(torch.randn(2, 16, NUM_REGIONS), -1))
    a = spatial_consistency_loss(logits, target, patch_weight=counted)
    b = spatial_consistency_loss(logits, other, patch_weight=counted)
    torch.testing.assert_close(a["loss"], b["loss"])
    assert not torch.allclose(
        spatial_consistency_loss(logits, target)["loss"], spatial_consistency_loss(logits, other)["loss"]
    )


def test_grows_with_a_larger_shift_of_one_part() -> None:
    target = one_hot(part_map())
    previous = {"region": -1.0, "centroid": -1.0, "loss": -1.0}
    for shift in range(4):
        out = spatial_consistency_loss(smoothed_logits(part_map(nose_dx=shift)), target)
        for key in previous:
            assert float(out[key]) > previous[key], (shift, key)
            previous[key] = float(out[key])
    assert previous["centroid"] > 0


def test_grows_with_a_larger_shift_of_the_whole_map() -> None:
    target = one_hot(part_map())
    previous = {"region": -1.0, "loss": -1.0}
    for shift in range(4):
        out = spatial_consistency_loss(smoothed_logits(part_map(all_dx=shift)), target)
        for key in previous:
            assert float(out[key]) > previous[key], (shift, key)
            previous[key] = float(out[key])


def test_only_groups_present_in_the_target_form_pairs() -> None:
    # 0.3 patch of ears: absent at min_group_mass=0.5, present at 0.2. The prediction puts the same
    # ears mass at the other end of the face (patches 4 * COLS + 1 and 4 * COLS + 8 are both skin).
    target = one_hot(part_map())
    predicted = target.clone()
    left, right = 5 * COLS + 1, 5 * COLS + 8
    target[0, left, R["skin"]], target[0, left, R["ears"]] = 0.7, 0.3
    predicted[0, right, R["skin"]], predicted[0, right, R["ears"]] = 0.7, 0.3
    logits = torch.log(predicted.clamp_min(1e-12))
    absent = spatial_consistency_loss(logits, target, min_group_mass=0.5, pair_reduction="mean")["centroid"]
    present = spatial_consistency_loss(logits, target, min_group_mass=0.2, pair_reduction="mean")["centroid"]
    assert float(absent) < 0.01  # only the skin centroid moves a little
    assert float(present) > 0.1  # ears pairs are off by ~7/12 of the width
    # A target with a single present group has no pair: geometry term exactly 0.
    lonely = torch.zeros(1, ROWS * COLS, NUM_REGIONS)
    lonely[..., R["skin"]] = 1.0
    out = spatial_consistency_loss(torch.randn(1, ROWS * COLS, NUM_REGIONS), lonely)
    assert float(out["centroid"]) == 0.0 and torch.isfinite(out["loss"])


def test_batch_average_dtype_and_compile() -> None:
    targets = torch.cat([one_hot(part_map()), one_hot(part_map(all_dx=2))])
    exact = torch.log(one_hot(part_map(all_dx=2)).clamp_min(1e-12))
    logits = torch.cat([smoothed_logits(part_map(nose_dx=2)), exact])
    out = spatial_consistency_loss(logits.bfloat16(), targets, centroid_weight=2.0)
    assert all(v.dtype == torch.float32 for v in out.values())
    single = spatial_consistency_loss(logits[:1], targets[:1])["centroid"]
    # sample 2 is predicted exactly: the batch geometry term is half of sample 1's
    assert math.isclose(float(spatial_consistency_loss(logits, targets)["centroid"]), float(single) / 2, rel_tol=0.05)
    torch.testing.assert_close(out["loss"], out["region"] + 2.0 * out["centroid"])
    compiled = torch.compile(spatial_consistency_loss, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(logits, targets)["loss"], spatial_consistency_loss(logits, targets)["loss"])


def test_bad_shapes_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="not a square grid"):
        spatial_consistency_loss(torch.zeros(1, 12, NUM_REGIONS), torch.ones(1, 12, NUM_REGIONS) / NUM_REGIONS)
    with pytest.raises(ValueError, match="must both be"):
        spatial_consistency_loss(torch.zeros(1, 16, NUM_REGIONS), torch.zeros(1, 16, 4))


def test_patch_centres() -> None:
    centres = patch_centres(2, 4)
    torch.testing.assert_close(centres[0], torch.tensor([0.125, 0.25]))
    torch.testing.assert_close(centres[5], torch.tensor([0.375, 0.75]))  # row 1, column 1


@pytest.mark.parametrize("mode", ["mse", "kl"])
def test_affinity_loss(mode: str) -> None:
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 10, 16, generator=g)
    assert float(affinity_consistency_loss(teacher.clone(), teacher, mode=mode)) < 1e-6
    assert float(affinity_consistency_loss(3.0 * teacher, teacher, mode=mode)) < 1e-6  # cosine: scale-free
    teacher = teacher.requires_grad_(True)
    student = torch.randn(2, 10, 16, generator=g, requires_grad=True)
    loss = affinity_consistency_loss(student.bfloat16(), teacher, mode=mode)
    assert loss.dtype == torch.float32 and float(loss.detach()) > 1e-3
    loss.backward()
    assert teacher.grad is None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    # closer student -> smaller loss
    near = teacher.detach() + 0.05 * torch.randn(2, 10, 16, generator=g)
    assert float(affinity_consistency_loss(near, teacher, mode=mode)) < float(loss.detach())
    compiled = torch.compile(affinity_consistency_loss, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(near, teacher.detach(), mode), affinity_consistency_loss(near, teacher, mode))


def test_affinity_loss_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="unknown affinity mode"):
        affinity_consistency_loss(torch.zeros(1, 3, 4), torch.zeros(1, 3, 4), mode="l1")
