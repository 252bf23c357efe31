"""Geometry: crops move landmarks with the pixels; soft-argmax finds the peak; a probe can learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from quiet_trainer import quiet_trainer

from pacofr.eval.crop import crop_resize
from pacofr.eval.data import EvalDataModule
from pacofr.eval.heads import soft_argmax
from pacofr.eval.module import EvalModule, run_eval


@pytest.mark.parametrize("use_box", [True, False])
def test_crop_moves_landmarks_with_the_pixels(use_box):
    image = np.zeros((80, 100, 3), np.uint8)
    points = np.array([[30.0, 50.0], [70.0, 20.0]], np.float32)
    for x, y in points.astype(int):
        image[y - 1 : y + 2, x - 1 : x + 2] = 255  # a 3x3 dot centred on the landmark pixel
    sample = {"image": image, "landmarks": points, "box": np.array([20, 10, 80, 60], np.float32)}
    out = crop_resize(sample, 64, use_box=use_box, box_scale=1.25)
    for (x, y), (u, v) in zip(points, out["landmarks"]):
        # continuous crop coordinates: the dot's centre pixel (i, j) spans [i, i + 1)
        j, i = int(v), int(u)
        assert out["image"][j, i].min() > 100, (x, y, u, v)
    side = 60 * 1.25 if use_box else 100
    assert out["box"][2] - out["box"][0] == pytest.approx(60 * 64 / side, rel=1e-5)


def test_crop_resizes_labels_with_nearest():
    seg = np.zeros((40, 40), np.uint8)
    seg[:, 20:] = 7
    out = crop_resize({"image": np.zeros((40, 40, 3), np.uint8), "seg": seg}, 16, use_box=False)
    assert set(np.unique(out["seg"])) == {0, 7}
    assert (out["seg"][:, :8] == 0).all() and (out["seg"][:, 8:] == 7).all()


def test_soft_argmax_finds_the_peak():
    heat = torch.full((1, 2, 8, 8), -50.0)
    heat[0, 0, 2, 5] = 50.0  # row 2, column 5
    heat[0, 1, 7, 0] = 50.0
    xy = soft_argmax(heat)
    torch.testing.assert_close(xy[0], torch.tensor([[5.5 / 8, 2.5 / 8], [0.5 / 8, 7.5 / 8]]))


def test_probe_learns_a_separable_task(tmp_path):
    """Expression labels that follow the image colour: a linear probe on a random tiny ViT gets
    them all right on the (same-looking) test faces after a few epochs."""
    root = tmp_path / "basic"
    lines = []
    colours = {1: (255, 0, 0), 4: (0, 255, 0), 7: (0, 0, 255)}
    for split, width in (("train", 5), ("test", 4)):
        for i in range(1, 10):
            label = (1, 4, 7)[i % 3]
            name = f"{split}_{i:0{width}d}"
            lines.append(f"{name}.jpg {label}")
            path = root / "Image" / "aligned" / f"{name}_aligned.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            shade = 0.6 + 0.4 * (i / 9)  # same colour family, different brightness
            Image.fromarray(np.full((100, 100, 3), [int(c * shade) for c in colours[label]], np.uint8)).save(path)
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    torch.manual_seed(0)
    data = EvalDataModule("rafdb", str(root), img_size=32, batch_size=9, num_workers=0)
    model = EvalModule(
        "rafdb",
        encoder_name="vit_tiny_patch16_224",
        img_size=32,
        lr=0.05,
        weight_decay=0.0,
        results_dir=str(tmp_path / "results"),
    )
    trainer = quiet_trainer(tmp_path, max_epochs=40)
    results = run_eval(trainer, model, data)
    assert results["metrics"]["test"]["accuracy"] == pytest.approx(1.0)
    assert results["checkpoint"] is None and results["epochs"] == 40
