"""The online probe: ridge and k-NN metrics against hand-computed values, and the callback logging finite
probe scores to TensorBoard during a tiny pretraining fit."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from data_prep.shard_writer import ShardSink, encode_jpeg, encode_label_png
from pacofr.callbacks.online_probe import OnlineProbe, whole_identities
from pacofr.data.datamodule import PretrainDataModule
from pacofr.data.format import Manifest, SplitInfo, sample_key, write_manifest
from pacofr.eval.probes import KNNProbe, RidgeProbe
from pacofr.masking import RandomMasker
from pacofr.objectives import MAE
from pacofr.training.module import PretrainModule

# --- RidgeProbe -----------------------------------------------------------------------------------


def numpy_ridge_cv(x: np.ndarray, y: np.ndarray, alpha: float, folds: int) -> np.ndarray:
    """Written out independently: per fold, z-score x on the training rows, centre y, solve the normal
    equations of (1/n)|Xw - y|^2 + alpha|w|^2, predict the held-out rows; mean |error| per target."""
    errors = np.zeros_like(y)
    for f in range(folds):
        test = np.arange(len(x)) % folds == f
        xtr, ytr = x[~test], y[~test]
        mu, sd = xtr.mean(0), xtr.std(0)
        z = (xtr - mu) / sd
        n, d = z.shape
        w = np.linalg.solve(z.T @ z + n * alpha * np.eye(d), z.T @ (ytr - ytr.mean(0)))
        errors[test] = np.abs(((x[test] - mu) / sd) @ w + ytr.mean(0) - y[test])
    return errors.mean(0)


def test_ridge_probe_matches_the_normal_equations():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)) * rng.uniform(0.5, 3.0, size=6) + rng.normal(size=6)
    y = x @ rng.normal(size=(6, 3)) + 0.3 * rng.normal(size=(40, 3))
    expected = numpy_ridge_cv(x, y, alpha=0.5, folds=4)

    metric = RidgeProbe(alpha=0.5, num_folds=4)
    # fed out of order, in two batches, with a duplicated sample (a padded sampler): same answer
    order = rng.permutation(40)
    first, second = order[:25], np.concatenate([order[25:], order[:3]])
    for part in (first, second):
        metric.update(torch.tensor(x[part]), torch.tensor(y[part]), torch.tensor(part))
    np.testing.assert_allclose(metric.compute().numpy(), expected, rtol=1e-5)


def test_ridge_probe_recovers_an_exact_linear_map():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 7.0
    metric = RidgeProbe(alpha=1e-8, num_folds=4)
    metric.update(x, y[:, 0], torch.arange(64))
    assert metric.compute().item() < 1e-4


def test_ridge_probe_refuses_too_few_samples():
    metric = RidgeProbe(num_folds=4)
    metric.update(torch.randn(5, 3), torch.randn(5, 3), torch.arange(5))
    with pytest.raises(ValueError, match=">= 8 samples"):
        metric.compute()


# --- KNNProbe -------------------------------------------------------------------------------------

POINTS = torch.tensor([[1.0, 0.0], [0.95, 0.05], [0.0, 1.0], [0.05, 0.95], [0.6, 0.8], [-1.0, 0.0]])
LABELS = torch.tensor([0, 0, 1, 1, 0, 2])


def test_knn_probe_one_neighbour_by_hand():
    # cosine nearest neighbours: 0->1, 1->0, 2->3, 3->2 (right); 4 -> 3 (0.830 > 0.8 > 0.641: wrong);
    # 5 is the only face of identity 2, so it is not scored: 4 right of 5
    metric = KNNProbe(k=1)
    metric.update(POINTS, LABELS, torch.arange(6))
    assert metric.compute().item() == pytest.approx(4 / 5)


def test_knn_probe_majority_and_tie_to_the_nearest():
    # k=3, top three by cosine: 0 -> 1, 4, 3 (labels 0, 0, 1: right); 1 -> 0, 4, 3 (0, 0, 1: right);
    # 2 -> 3, 4, 1 (1, 0, 0: wrong); 3 -> 2, 4, 1 (1, 0, 0: wrong); 4 -> 3, 2, 1 (1, 1, 0: wrong)
    metric = KNNProbe(k=3)
    metric.update(POINTS, LABELS, torch.arange(6))
    assert metric.compute().item() == pytest.approx(2 / 5)
    # k=2 with one vote per label: the nearer neighbour's label wins
    pts = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, -0.3], [0.0, 1.0], [-0.1, 0.9]])
    labels = torch.tensor([0, 1, 0, 1, 1])
    # point 0, k=2: neighbours 1 (label 1, nearer) and 2 (label 0): tie -> label 1 (wrong)
    # point 1: neighbours 0 (label 0) and 2 (label 0) -> wrong; point 2: 0 (0), 1 (1) -> tie -> 0 (right)
    # point 3: 4 (1), 1 (1) -> right; point 4: 3 (1), 1 (1) -> right
    metric = KNNProbe(k=2)
    metric.update(pts, labels, torch.arange(5))
    assert metric.compute().item() == pytest.approx(3 / 5)


# --- the callback in a tiny fit ---------------------------------------------------------------------


def write_probe_faces(root: Path, n: int = 24, size: int = 48) -> Path:
    """A val split whose json carries pose and identity (as the synthetic generator writes them)."""
    rng = np.random.default_rng(0)
    with ShardSink(root, "val", max_per_shard=10) as sink:
        for i in range(n):
            ident = i % 4
            image = np.clip(rng.normal(60 * ident + 30, 20, size=(size, size, 3)), 0, 255).astype(np.uint8)
            seg = np.zeros((size, size), np.uint8)
            pose = {"yaw": float(rng.uniform(-60, 60)), "pitch": float(rng.uniform(-20, 20)), "roll": 0.0}
            meta = {"source": f"probe/{i}", "face_index": 0, "box": [0, 0, size, size], "score": 1.0,
                    "landmarks5": [[0.0, 0.0]] * 5, "align_matrix": [[1, 0, 0], [0, 1, 0]], "parser": "test",
                    "pose": pose, "identity": ident}  # fmt: skip
            sink.write(sample_key(meta["source"], 0), encode_jpeg(image), encode_label_png(seg), meta)
    files = sink.written
    write_manifest(
        root, Manifest(image_size=size, splits={"val": SplitInfo(n, [f for f, _ in files], [c for _, c in files])})
    )
    return root


def test_callback_logs_finite_probe_scores_during_fit(tmp_path, make_shards):
    faces = make_shards(tmp_path / "faces", {"train": [16, 16]}, size=64)
    probe_root = write_probe_faces(tmp_path / "probe")
    module = PretrainModule(
        MAE(encoder_size="tiny", img_size=64, decoder_depth=1, decoder_dim=32), warmup_steps=1, base_lr=1e-2
    )
    data = PretrainDataModule(
        root=str(faces), batch_size=8, num_workers=0, image_size=64, val_split=None, shuffle_buffer=8,
        masker=RandomMasker(patch_size=16, mask_ratio=0.75),
    )  # fmt: skip
    probe = OnlineProbe(root=str(probe_root), num_samples=20, every_n_steps=2, batch_size=8)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=4, callbacks=[probe], logger=TensorBoardLogger(str(tmp_path), name="tb"),
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, log_every_n_steps=50,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)

    assert probe.images.shape == (20, 3, 64, 64)  # the whole set on one process, at the encoder's size
    events = EventAccumulator(trainer.logger.log_dir)
    events.Reload()
    mae = events.Scalars("probe/pose_mae")
    acc = events.Scalars("probe/knn_identity_acc")
    assert [e.step for e in mae] == [2, 4] and [e.step for e in acc] == [2, 4]
    assert all(math.isfinite(e.value) and e.value >= 0 for e in mae)
    assert all(0.0 <= e.value <= 1.0 for e in acc)
    assert mae[0].value != mae[1].value, "the encoder trained between the probes: the features changed"
    assert "probe/pose_mae_yaw" in events.Tags()["scalars"]


def test_callback_needs_pose_in_the_json(tmp_path, make_shards):
    faces = make_shards(tmp_path / "faces", {"val": [12]}, size=32)  # the pretraining shards carry no pose
    probe = OnlineProbe(root=str(faces), num_samples=12)
    module = PretrainModule(MAE(encoder_size="tiny", img_size=32, decoder_depth=1, decoder_dim=32))
    trainer = L.Trainer(accelerator="cpu", logger=False)
    with pytest.raises(ValueError, match="no pose or identity"):
        probe.setup(trainer, module, "fit")


def test_probe_set_is_whole_identities_spread_over_the_split():
    """The synthetic faces cycle through their people: evenly spaced samples could repeat no identity."""
    identities = [i % 50 for i in range(400)]  # 8 faces per identity, cycling
    chosen = whole_identities(identities, 64)
    picked = [identities[i] for i in chosen]
    assert len(chosen) == 64 and len(set(picked)) == 8
    assert all(picked.count(p) == 8 for p in set(picked))  # whole identities: k-NN has repeats
    assert max(picked) - min(picked) > 40  # spread over the identity list, not the first eight
    assert len(whole_identities(identities, 1000)) == 400
