"""reconstruction_loss and psnr."""

from __future__ import annotations

import math

import torch

from pacofr.losses.reconstruction import psnr, reconstruction_loss


def _batch(seed: int = 0, b: int = 3, n: int = 16, p: int = 12):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(b, n, p, generator=g)
    target = torch.randn(b, n, p, generator=g)
    loss_mask = torch.rand(b, n, generator=g) < 0.6
    covered = torch.rand(b, n, generator=g) < 0.3
    return pred, target, loss_mask, covered


def _reference(pred, target, mask) -> float:
    """Plain loops: mean over the selected patches of each patch's MSE."""
    values = [
        float(((pred[i, j] - target[i, j]) ** 2).mean())
        for i in range(pred.shape[0])
        for j in range(pred.shape[1])
        if mask[i, j]
    ]
    return sum(values) / len(values) if values else 0.0


def test_matches_reference_and_is_zero_for_a_perfect_prediction() -> None:
    pred, target, loss_mask, covered = _batch()
    out = reconstruction_loss(pred, target, loss_mask)
    assert math.isclose(float(out["rec"]), _reference(pred, target, loss_mask), rel_tol=1e-5)
    assert float(out["rec_covered"]) == 0.0 and torch.equal(out["loss"], out["rec"])
    assert float(reconstruction_loss(target, target, loss_mask, covered, 0.5)["loss"]) == 0.0


def test_visible_unreplaced_patches_are_ignored() -> None:
    pred, target, loss_mask, covered = _batch(1)
    pred = pred.clone().requires_grad_(True)
    out = reconstruction_loss(pred, target, loss_mask, covered, covered_weight=0.2)
    out["loss"].backward()
    assert (pred.grad[~loss_mask] == 0).all()
    assert (pred.grad[loss_mask].abs().sum(dim=-1) > 0).all()
    changed = pred.detach().clone()
    changed[~loss_mask] = torch.tensor(float("nan"))  # even garbage there changes nothing
    again = reconstruction_loss(changed, target, loss_mask, covered, covered_weight=0.2)
    for key in out:
        assert torch.equal(again[key], out[key].detach()), key


def test_denominator_counts_only_loss_patches() -> None:
    target = torch.zeros(2, 4, 3)
    pred = torch.zeros(2, 4, 3)
    pred[0, 1] = 2.0  # the one loss patch: MSE 4
    loss_mask = torch.zeros(2, 4, dtype=torch.bool)
    loss_mask[0, 1] = True
    assert float(reconstruction_loss(pred, target, loss_mask)["rec"]) == 4.0


def test_covered_weight_adds_the_covered_term() -> None:
    pred, target, loss_mask, covered = _batch(2)
    base = reconstruction_loss(pred, target, loss_mask)
    out = reconstruction_loss(pred, target, loss_mask, covered, covered_weight=0.007)
    expected_covered = _reference(pred, target, covered & loss_mask)
    assert expected_covered > 0
    assert math.isclose(float(out["rec_covered"]), expected_covered, rel_tol=1e-5)
    assert math.isclose(float(out["loss"]), float(base["rec"]) + 0.007 * expected_covered, rel_tol=1e-6)
    # covered patches outside loss_mask do not count
    outside = covered & ~loss_mask
    assert outside.any()
    pred_changed = pred.clone()
    pred_changed[outside] += 10.0
    assert torch.equal(reconstruction_loss(pred_changed, target, loss_mask, covered, 0.007)["loss"], out["loss"])


def test_empty_masks_are_safe() -> None:
    pred, target, _, _ = _batch(3)
    pred = pred.requires_grad_(True)
    empty = torch.zeros(pred.shape[:2], dtype=torch.bool)
    out = reconstruction_loss(pred, target, empty, empty, covered_weight=1.0)
    out["loss"].backward()
    assert float(out["loss"].detach()) == 0.0 and torch.isfinite(pred.grad).all()


def test_low_precision_inputs_compute_in_float32() -> None:
    pred, target, loss_mask, covered = _batch(4)
    out = reconstruction_loss(pred.bfloat16(), target.bfloat16(), loss_mask, covered, 0.1)
    assert all(v.dtype == torch.float32 for v in out.values())
    ref = reconstruction_loss(pred.bfloat16().float(), target.bfloat16().float(), loss_mask, covered, 0.1)
    torch.testing.assert_close(out["loss"], ref["loss"])


def test_traces_without_graph_breaks() -> None:
    pred, target, loss_mask, covered = _batch(5)
    compiled = torch.compile(reconstruction_loss, fullgraph=True, backend="eager")
    out = compiled(pred, target, loss_mask, covered, 0.007)
    torch.testing.assert_close(out["loss"], reconstruction_loss(pred, target, loss_mask, covered, 0.007)["loss"])
    compiled_psnr = torch.compile(psnr, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled_psnr(pred, target, loss_mask), psnr(pred, target, loss_mask))


def test_psnr() -> None:
    target = torch.rand(2, 8, 6)
    assert math.isclose(float(psnr(target + 0.1, target)), 20.0, rel_tol=1e-4)  # MSE 0.01
    pred = target.clone()
    pred[0] += 0.1
    pred[1] += 0.01
    assert math.isclose(float(psnr(pred, target)), 30.0, rel_tol=1e-4)  # mean of 20 dB and 40 dB
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[1, :3] = True  # only image 1 has selected patches
    assert math.isclose(float(psnr(pred, target, mask)), 40.0, rel_tol=1e-4)
    assert float(psnr(pred, target, torch.zeros_like(mask))) == 0.0
    assert math.isclose(float(psnr(target + 0.2, target, data_range=2.0)), 20.0, rel_tol=1e-4)
    assert torch.isfinite(psnr(target, target))
