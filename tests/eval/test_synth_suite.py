"""The synthetic suite end to end on faces drawn by the real generator (``pacofr-prep synth``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from eval_layouts import write_pretraining_checkpoint
from quiet_trainer import quiet_trainer

from pacofr.eval.data import EvalDataModule
from pacofr.eval.datasets import SynthFaces, SynthPairs
from pacofr.eval.module import EvalModule, run_eval

pytest.importorskip("cv2")  # the generator needs the `prep` extra


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from data_prep.cli import main

    root = tmp_path_factory.mktemp("synth") / "faces"
    args = ["synth", "--out", str(root), "--n", "48", "--size", "64", "--val-fraction", "0.25", "--quiet"]
    assert main(args) == 0
    return root


def test_generator_output_reads_with_every_target(synth_root):
    faces = SynthFaces(synth_root, "val")
    s = faces[0]
    assert s["image"].shape == (64, 64, 3) and s["seg"].shape == (64, 64)
    assert s["landmarks"].shape == (68, 2) and s["pose"].shape == (3,) and s["landmarks5"].shape == (5, 2)
    assert np.isfinite(s["landmarks"]).all() and s["seg"].max() < 19
    pairs = SynthPairs(synth_root, "val")
    assert len(pairs) == len(faces) and {p[2] for p in pairs.pairs} == {True, False}


@pytest.mark.parametrize("task", ["synth_parsing", "synth_landmarks", "synth_pose", "synth_verification"])
def test_synth_task_with_occlusion(tmp_path, synth_root, task):
    ckpt = tmp_path / "last.ckpt"
    write_pretraining_checkpoint(ckpt, img_size=32)
    data = EvalDataModule(task, str(synth_root), img_size=32, batch_size=16, num_workers=0, occlusion_area=0.25)
    model = EvalModule(task, encoder_ckpt=str(ckpt), img_size=32, head_dim=16)
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    run_eval(trainer, model, data)
    out = json.loads((tmp_path / "results" / f"{task}.json").read_text())
    assert set(out["metrics"]) == {"val", "val+occluded"}
    assert np.isfinite(out["occlusion_drop"]["val"])
