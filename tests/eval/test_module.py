"""Probe and fine-tune every task end to end (fast_dev_run, tiny ViT at 32 px, a few samples)."""

from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch
from eval_layouts import WRITERS, write_pretraining_checkpoint, write_synth
from lightning.pytorch.loggers import TensorBoardLogger
from quiet_trainer import quiet_trainer

from pacofr.eval.data import EvalDataModule
from pacofr.eval.module import EvalModule, default_feature_layers, run_eval
from pacofr.eval.tasks import TASKS

CASES = [(t, m) for t in sorted(TASKS) for m in ("probe", "finetune") if m == "probe" or TASKS[t].train_split]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "last.ckpt"
    write_pretraining_checkpoint(path, img_size=32)
    return path


def make_data(tmp_path, task: str, **kwargs) -> EvalDataModule:
    write_test, write_train = WRITERS[task]
    root = tmp_path / "data"
    write_test(root)
    train_root = None
    if write_train is not None:
        train_root = tmp_path / "train_data"
        write_train(train_root)
    return EvalDataModule(
        task,
        str(root),
        str(train_root) if train_root else None,
        img_size=32,
        batch_size=16,
        num_workers=0,
        max_train_samples=4,
        **kwargs,
    )


def quick_trainer(tmp_path, **kwargs) -> L.Trainer:
    return quiet_trainer(tmp_path, **{"fast_dev_run": True, "logger": None, **kwargs})


@pytest.mark.parametrize("task,mode", CASES)
def test_fast_dev_run(tmp_path, checkpoint, task, mode):
    torch.manual_seed(0)
    data = make_data(tmp_path, task)
    model = EvalModule(
        task, encoder_ckpt=str(checkpoint), img_size=32, mode=mode, head_dim=16, results_dir=str(tmp_path / "results")
    )
    before = model.backbone.blocks[0].attn.qkv.weight.detach().clone()
    results = run_eval(quick_trainer(tmp_path), model, data)
    after = model.backbone.blocks[0].attn.qkv.weight.detach()
    if data.has_train:
        # a probe never touches the encoder; fine-tuning moves it
        assert torch.equal(before, after) == (mode == "probe")
    written = json.loads((tmp_path / "results" / f"{task}.json").read_text())
    assert written["metrics"] == results["metrics"]
    assert set(written["metrics"]) == set(TASKS[task].test_splits)
    spec = TASKS[task]
    for split, values in written["metrics"].items():
        primary = next(k for k in values if k.startswith(spec.primary))
        assert math.isfinite(values[primary]), (split, values)
        if spec.higher_is_better:
            assert 0.0 <= values[primary] <= 1.0
    assert len(written["checkpoint_sha256"]) == 64 and written["mode"] == mode


def test_results_next_to_checkpoint_and_tensorboard(tmp_path, checkpoint):
    """Without results_dir the json lands in results/ beside the checkpoint; scores reach TensorBoard;
    with occluders every split gets an occluded twin and a drop."""
    ckpt = tmp_path / "run" / "last.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(checkpoint.read_bytes())
    write_synth(tmp_path / "synth", list(range(6)) * 2)
    data = EvalDataModule(
        "synth_parsing", str(tmp_path / "synth"), img_size=32, batch_size=4, num_workers=0, occlusion_area=0.3
    )
    model = EvalModule("synth_parsing", encoder_ckpt=str(ckpt), img_size=32, head_dim=16)
    logger = TensorBoardLogger(str(tmp_path / "tb"), name="eval")
    trainer = quick_trainer(
        tmp_path, fast_dev_run=False, max_epochs=2, limit_train_batches=2, logger=logger, log_every_n_steps=1
    )
    run_eval(trainer, model, data)
    out = json.loads((ckpt.parent / "results" / "synth_parsing.json").read_text())
    assert set(out["metrics"]) == {"val", "val+occluded"}
    assert out["epochs"] == 2 and out["global_step"] == 4
    drop = out["metrics"]["val"]["f1_mean"] - out["metrics"]["val+occluded"]["f1_mean"]
    assert out["occlusion_drop"]["val"] == pytest.approx(drop)
    assert out["config"]["data"]["occlusion_area"] == 0.3
    assert "eval/test/val/f1_mean" in trainer.logged_metrics  # eval tags under their own group
    assert list((tmp_path / "tb" / "eval").rglob("events.out.tfevents.*"))


def test_layer_decay_groups_when_fine_tuning(checkpoint):
    model = EvalModule("rafdb", encoder_ckpt=str(checkpoint), img_size=32, mode="finetune", lr=1e-3, layer_decay=0.5)
    model.trainer = L.Trainer(max_steps=10, accelerator="cpu", logger=False)
    lrs = sorted({g["lr"] for g in model.configure_optimizers()["optimizer"].param_groups})
    # head and final norm at lr, block 11 at lr / 2, ... block 0 at lr / 2^12, patch/pos embeddings at lr / 2^12
    assert lrs[-1] == pytest.approx(1e-3) and lrs[0] == pytest.approx(1e-3 * 0.5**12)
    assert len(lrs) == 13


def test_default_feature_layers():
    assert default_feature_layers(12) == [3, 5, 7, 11]
    assert default_feature_layers(24) == [7, 11, 15, 23]


def test_mismatched_tasks_are_refused(tmp_path, checkpoint):
    write_synth(tmp_path, list(range(6)) * 2)
    data = EvalDataModule("synth_pose", str(tmp_path), img_size=32, num_workers=0)
    model = EvalModule("synth_parsing", encoder_ckpt=str(checkpoint), img_size=32)
    with pytest.raises(ValueError, match="differ"):
        run_eval(quick_trainer(tmp_path), model, data)


def test_verification_embedding_is_mirror_symmetric(checkpoint):
    model = EvalModule("lfw", encoder_ckpt=str(checkpoint), img_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.embed(x), model.embed(x.flip(-1)))
        assert not torch.allclose(model.embed(x)[0], model.embed(x)[1])
