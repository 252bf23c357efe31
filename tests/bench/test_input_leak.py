"""bench/input_leak.py: the read-outs of the full arm's substitute tokens, on images whose patches are smooth."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pacofr.objectives import MAE, PaCoFRFull

REPO = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("input_leak", REPO / "bench" / "input_leak.py")
leak = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(leak)

CORE = dict(encoder_size="tiny", img_size=64, patch_size=16, decoder_depth=1, decoder_dim=64)
CB = dict(num_codes=64, code_dim=16, codebook_options={"proto_hidden": 32, "belief_hidden": 32}, incubation_steps=0)


def smooth_images(n: int, seed: int) -> torch.Tensor:
    """Low-frequency images (8x8 noise upsampled) + a little pixel noise: a 4x4-pooled patch holds most of it."""
    g = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.randn(n, 3, 8, 8, generator=g), size=64, mode="bilinear", align_corners=False)
    return coarse + 0.05 * torch.randn(n, 3, 64, 64, generator=g)


def save_checkpoint(path: Path, objective: torch.nn.Module, class_path: str, init_args: dict) -> None:
    state = {f"objective.{k}": v for k, v in objective.state_dict().items()}
    hparams = {"objective": {"class_path": class_path, "init_args": init_args}}
    torch.save({"hyper_parameters": hparams, "state_dict": state}, path)


def test_pooled_pixels_are_each_patch_pooled():
    torch.manual_seed(0)
    model = PaCoFRFull(**CORE, **CB, mask_ratio=0.5)
    images = smooth_images(2, 0)
    pooled = leak.pooled_pixels(model, images, 4)
    assert pooled.shape == (2, 16, 3 * 4 * 4)  # 16 patches of 16 px, 4 x 4 cells of 3 colours each
    # patch (row 1, col 2) of image 1: its cell (0, 3) is the mean of pixels rows 16..19, columns 44..47
    cell = images[1, :, 16:20, 44:48].mean(dim=(1, 2))
    cells = pooled[1, 1 * 4 + 2].reshape(4, 4, 3)
    assert torch.allclose(cells[0, 3], cell, atol=1e-6)


def test_lowpass_read_out_beats_the_position_prior_and_matches_its_pixels():
    torch.manual_seed(0)
    model = PaCoFRFull(**CORE, **CB, mask_ratio=0.5).eval()
    scores = leak.leak_table(model, smooth_images(60, 1), smooth_images(30, 2), seed=0, factors=(4, 16))
    assert abs(scores["zero"] - 1.0) < 0.05  # the target is normalised per patch
    assert scores["position prior (= mask token)"] < scores["zero"] + 0.05  # random images: no position structure
    assert scores["lowpass 4x4"] < 0.6 * scores["position prior (= mask token)"]  # smooth patches: the pool holds them
    assert scores["lowpass 4x4"] < scores["lowpass 16x16"]  # a coarser window holds less of the patch
    # the patch embedding is linear in the pooled pixels: the same read-out up to the ridge's strength choice
    for f in (4, 16):
        assert scores[f"lowpass {f}x{f}"] == pytest.approx(scores[f"pooled pixels {f}x{f}"], abs=0.03)
    assert all(0.0 <= v < 1.5 for v in scores.values())


def test_load_objective_round_trip_and_refusal(tmp_path):
    torch.manual_seed(0)
    args = {**CORE, **CB, "mask_ratio": 0.5, "substitute": "lowpass"}
    model = PaCoFRFull(**args)
    save_checkpoint(tmp_path / "full.ckpt", model, "pacofr.objectives.PaCoFRFull", args)
    loaded = leak.load_objective(tmp_path / "full.ckpt")
    assert isinstance(loaded, PaCoFRFull) and not loaded.training and loaded.substitute == "lowpass"
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key

    mae_args = {**CORE, "mask_ratio": 0.75}
    save_checkpoint(tmp_path / "mae.ckpt", MAE(**mae_args), "pacofr.objectives.MAE", mae_args)
    with pytest.raises(leak.LeakInputError, match="has no codebook"):
        leak.load_objective(tmp_path / "mae.ckpt")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--checkpoint", "no_equals_sign"], "--checkpoint wants LABEL=PATH"),
        (["--checkpoint", "x=/nonexistent/last.ckpt"], "input_leak: "),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "input_leak.py"), "--data-root", str(tmp_path), *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
