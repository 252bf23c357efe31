"""Probe feature caching: a probe trained on cached features scores like one that encodes every epoch,
encodes each training image once, and the cache is refused where it would change the results."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from eval_layouts import write_pretraining_checkpoint, write_rafdb, write_synth
from quiet_trainer import quiet_trainer

from pacofr.eval.data import EvalDataModule, TaskDataset
from pacofr.eval.feature_cache import FeatureDataset
from pacofr.eval.module import EvalModule, run_eval

EPOCHS = 3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "last.ckpt"
    write_pretraining_checkpoint(path, img_size=32)
    return path


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "faces"
    write_synth(root, list(range(6)) * 2)  # 12 train, 12 val faces
    return root


def trainer(tmp_path, **kwargs) -> L.Trainer:
    return quiet_trainer(tmp_path, **{"max_epochs": EPOCHS, **kwargs})


def count_encoded_images(model: EvalModule) -> list[int]:
    """A running count of the images the encoder has seen (a hook on its patch embedding)."""
    seen = [0]
    model.backbone.patch_embed.register_forward_pre_hook(lambda _m, args: seen.__setitem__(0, seen[0] + len(args[0])))
    return seen


def probe(tmp_path, ckpt, root, task: str, cache, workers: int = 0) -> tuple[dict, EvalDataModule, int]:
    L.seed_everything(0)
    data = EvalDataModule(task, str(root), img_size=32, batch_size=4, num_workers=workers)
    model = EvalModule(
        task, encoder_ckpt=str(ckpt), img_size=32, head_dim=16, lr=1e-2, cache_features=cache, results_dir=str(tmp_path)
    )
    seen = count_encoded_images(model)
    results = run_eval(trainer(tmp_path), model, data)
    return results, data, seen[0]


@pytest.mark.parametrize("task", ["synth_parsing", "synth_landmarks", "synth_pose"])
def test_cached_probe_scores_like_the_uncached_one(tmp_path, checkpoint, synth_root, task):
    # the image run decodes in a worker process (as the suite does): the order must not depend on it
    plain, plain_data, plain_seen = probe(tmp_path / "plain", checkpoint, synth_root, task, cache=False, workers=1)
    cached, cached_data, cached_seen = probe(tmp_path / "cached", checkpoint, synth_root, task, cache="auto")
    assert isinstance(plain_data.datasets["train"], TaskDataset)
    assert isinstance(cached_data.datasets["train"], FeatureDataset)
    n_train, n_test = 12, 12
    assert plain_seen == EPOCHS * n_train + n_test  # drop_last: 12 samples, batches of 4
    assert cached_seen == n_train + n_test  # each training face encoded once
    assert cached["global_step"] == plain["global_step"] == EPOCHS * 3
    for split, values in plain["metrics"].items():
        for name, value in values.items():
            assert cached["metrics"][split][name] == pytest.approx(value, rel=1e-4, abs=1e-5), (split, name)


def test_features_match_the_encoder_output(tmp_path, checkpoint, synth_root):
    data = EvalDataModule("synth_parsing", str(synth_root), img_size=32, batch_size=5, num_workers=0)
    model = EvalModule("synth_parsing", encoder_ckpt=str(checkpoint), img_size=32, head_dim=16, cache_features=True)
    assert model.prepare_feature_cache(trainer(tmp_path), data) == ["train"]
    cached = data.datasets["train"]
    assert len(cached) == 12
    images = TaskDataset(data._reader("synth", "train", str(synth_root)), data.spec, 32, data.mean, data.std)
    for i in (0, 7, 11):
        feats, _ = model.encode(images[i]["image"][None])
        sample = cached[i]
        assert int(sample["input_size"]) == 32
        assert torch.equal(sample["seg"], images[i]["seg"])
        for got, want in zip(sample["features"], feats):
            torch.testing.assert_close(got, want[0], rtol=1e-5, atol=1e-5)


def test_auto_skips_a_cache_over_the_memory_limit(tmp_path, checkpoint, synth_root):
    data = EvalDataModule("synth_pose", str(synth_root), img_size=32, batch_size=4, num_workers=0)
    model = EvalModule("synth_pose", encoder_ckpt=str(checkpoint), img_size=32, cache_max_gb=1e-9)
    assert model.prepare_feature_cache(trainer(tmp_path), data) == []
    assert isinstance(data.datasets["train"], TaskDataset)


def test_auto_skips_single_pass_runs(tmp_path, checkpoint, synth_root):
    data = EvalDataModule("synth_pose", str(synth_root), img_size=32, num_workers=0)
    model = EvalModule("synth_pose", encoder_ckpt=str(checkpoint), img_size=32)
    assert model.prepare_feature_cache(trainer(tmp_path, max_epochs=1), data) == []
    assert model.prepare_feature_cache(trainer(tmp_path, fast_dev_run=True), data) == []


def test_cache_is_refused_where_it_would_change_results(tmp_path, checkpoint, synth_root):
    finetune = EvalModule("synth_pose", encoder_ckpt=str(checkpoint), img_size=32, mode="finetune", cache_features=True)
    data = EvalDataModule("synth_pose", str(synth_root), img_size=32, num_workers=0)
    with pytest.raises(ValueError, match="fine-tuned"):
        finetune.prepare_feature_cache(trainer(tmp_path), data)
    finetune.hparams.cache_features = "auto"
    assert finetune.prepare_feature_cache(trainer(tmp_path), data) == []

    write_rafdb(tmp_path / "rafdb")
    flipped = EvalDataModule("rafdb", str(tmp_path / "rafdb"), img_size=32, num_workers=0)
    model = EvalModule("rafdb", encoder_ckpt=str(checkpoint), img_size=32, cache_features=True)
    with pytest.raises(ValueError, match="data.augment false"):
        model.prepare_feature_cache(trainer(tmp_path), flipped)
    steady = EvalDataModule("rafdb", str(tmp_path / "rafdb"), img_size=32, num_workers=0, augment=False)
    assert model.prepare_feature_cache(trainer(tmp_path), steady) == ["train"]

    with pytest.raises(ValueError, match="cache_features"):
        EvalModule("synth_pose", encoder_ckpt=str(checkpoint), img_size=32, cache_features="yes")
