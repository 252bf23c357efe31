"""The device image path (``images_on_device=True``), run on CPU tensors: the same samples, label maps and masks
as the CPU path, pixels within a few grey levels of it, flips aligned with the label maps, corrupt JPEG bodies
replaced whole within their batch, and a tiny Lightning run training on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pacofr.data.datamodule import PretrainDataModule
from pacofr.data.device_images import augment_on_device, decode_jpegs, pack_jpegs, unpack_jpegs
from pacofr.data.format import flip_label_lut
from pacofr.data.transforms import AugmentConfig, JointTransform
from pacofr.masking import StructuredMasker

STD_LEVELS = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255  # normalised units -> grey levels


def datamodule(root: Path, on_device: bool, **kwargs) -> PretrainDataModule:
    options = dict(batch_size=8, num_workers=0, image_size=48, seed=5, shuffle_buffer=16)
    options.update(kwargs)
    return PretrainDataModule(
        root=str(root),
        masker=StructuredMasker(patch_size=16, mask_ratio=0.75),
        images_on_device=on_device,
        **options,  # type: ignore[arg-type]
    )


def first_batches(root: Path, count: int = 2, **kwargs) -> tuple[list[dict], list[dict]]:
    out = []
    for on_device in (False, True):
        dm = datamodule(root, on_device, **kwargs)
        loader = iter(dm.train_dataloader())
        out.append([dm.to_model_input(next(loader)) for _ in range(count)])
    return out[0], out[1]


def test_device_path_matches_the_cpu_path(tmp_path: Path, make_shards) -> None:
    root = make_shards(tmp_path / "d", {"train": [9, 8, 7]}, size=64)
    cpu, device = first_batches(root, image_size=64)  # enlarged crops: plain bilinear on both paths
    for a, b in zip(cpu, device):
        assert sorted(a) == sorted(b) and "jpeg" not in b
        assert a["key"] == b["key"]
        for key in ("seg", "mask", "region_hist", "covered"):  # built in the workers from the same draws
            assert torch.equal(a[key], b[key]), key
        assert b["image"].dtype == torch.float32 and b["image"].shape == a["image"].shape
        levels = ((a["image"] - b["image"]) * STD_LEVELS).abs()
        inner = levels[..., 1:-1, 1:-1]  # the crop's outer ring: see device_images._resize_crops
        assert inner.mean() < 0.5, inner.mean()
        assert inner.flatten().quantile(0.99) <= 2.01
        assert levels.mean() < 1.0


def test_masks_are_built_on_the_device_from_the_workers_draws(tmp_path: Path, make_shards) -> None:
    """The workers ship the masker's draws, not masks; the device builds the masks from them and the label maps:
    exact counts, region histograms of the very label map the batch carries (so aligned with it after crop and
    flip), and the same masks for a sample key whatever the worker count (a function of seed, epoch, key)."""
    from pacofr.masking import num_masked_patches
    from pacofr.masking.histograms import patch_region_histograms

    root = make_shards(tmp_path / "d", {"train": [9, 8, 7]}, size=64)
    by_key: list[dict[str, tuple]] = []
    for workers in (0, 2):
        dm = datamodule(root, True, image_size=64, num_workers=workers)
        loader = iter(dm.train_dataloader())
        seen: dict[str, tuple] = {}
        for _ in range(2):
            raw = next(loader)
            assert {"mask_draw_cover", "mask_draw_fallback"} <= set(raw) and "mask" not in raw
            assert "region_hist" not in raw
            batch = dm.to_model_input(raw)
            assert not any(key.startswith("mask_draw_") for key in batch)
            assert (batch["mask"].sum(1) == num_masked_patches(16, 0.75)).all()
            assert (batch["covered_patches"] <= batch["mask"]).all()
            assert torch.equal(batch["region_hist"], patch_region_histograms(batch["seg"], 16))
            for i, key in enumerate(batch["key"]):
                seen[key] = (batch["mask"][i], batch["covered"][i], batch["seg"][i])
        by_key.append(seen)
    common = set(by_key[0]) & set(by_key[1])
    assert len(common) >= 4
    for key in common:
        for a, b in zip(by_key[0][key], by_key[1][key]):
            assert torch.equal(a, b), key


def test_flip_keeps_pixels_and_labels_aligned() -> None:
    """A two-colour image whose label map marks the left half: after a forced flip the bright half of the
    device-augmented image is where the flipped label map puts it."""
    size = 32
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[:, : size // 2] = 200
    seg = np.zeros((size, size), dtype=np.uint8)
    seg[:, : size // 2] = 2  # a left-side label: the flip also swaps its id
    transform = JointTransform(size, train=True, config=AugmentConfig(crop_scale=(1, 1), crop_ratio=(1, 1)))
    box = (0, 0, size, size)
    labels = transform.apply_labels(seg, box, flip=True)
    jpeg, offsets = pack_jpegs([__import__("simplejpeg").encode_jpeg(image, quality=100)])
    decoded, failures = decode_jpegs(unpack_jpegs(jpeg, offsets), "cpu")
    assert failures == 0
    out = augment_on_device(
        decoded,
        torch.tensor([box]),
        torch.tensor([True]),
        torch.tensor([[1.0, 1.0, 1.0, 0.0]]),
        size,
        mean=(0, 0, 0),
        std=(1, 1, 1),
    )[0]
    bright = out.mean(0) > 0.5
    assert (labels != 0).sum() == size * size // 2
    assert torch.equal(bright, torch.from_numpy(labels != 0))
    assert int(labels.max()) == int(flip_label_lut()[2])


def test_mixed_source_sizes_and_shrinking_crops() -> None:
    """Sources of different sizes in one batch; a crop shrunk 3x is box-filtered (no aliasing): each output pixel
    averages 3x3 samples of a one-pixel checkerboard (4 or 5 of 9 white: 113 or 142), where one bilinear sample
    per pixel would land on whole pixels and keep the board's 0 / 255."""
    board = ((np.indices((96, 96)).sum(0) % 2) * 255).astype(np.uint8)
    small = torch.full((3, 40, 40), 100, dtype=torch.uint8)
    images = [torch.from_numpy(np.repeat(board[None], 3, 0)), small]
    out = augment_on_device(
        images,
        torch.tensor([[0, 0, 96, 96], [0, 0, 40, 40]]),
        torch.tensor([False, False]),
        torch.ones(2, 4) * torch.tensor([1.0, 1.0, 1.0, 0.0]),
        32,
        mean=(0, 0, 0),
        std=(1, 1, 1),
    )
    assert out.shape == (2, 3, 32, 32)
    grey = out[0] * 255
    assert (grey - 127.5).abs().max() <= 255 / 18 + 1
    assert torch.allclose(out[1] * 255, torch.full_like(out[1], 100.0))


def test_corrupt_jpeg_body_is_replaced_whole(tmp_path: Path, make_shards, corrupt_shard) -> None:
    """The header check passes a JPEG whose body is cut; the worker's JPEG rule rejects it (as the CPU path's
    decode would) and the sample becomes a copy of another of its batch: image, labels, masks and key together,
    counted in the data stats (``tests/data/test_device_jpeg_validity.py``: the same verdict as the CPU path)."""
    root = make_shards(tmp_path / "d", {"train": [8]}, size=64)
    bad = corrupt_shard(root / "train-000000.tar", "bad_jpeg_body", index=3)
    dm = datamodule(root, True, shuffle_buffer=1)
    batch = dm.to_model_input(dm.on_before_batch_transfer(next(iter(dm.train_dataloader())), 0))
    assert dm.device_decode_errors == 0 and dm.data_stats.decode_errors == 1  # rejected in the worker
    assert bad not in batch["key"] and len(batch["key"]) == 8
    donor = [k for k in batch["key"] if batch["key"].count(k) == 2]
    assert len(donor) == 2  # the replaced slot now carries its donor's key
    i, j = (n for n, k in enumerate(batch["key"]) if k == donor[0])
    for key in ("image", "seg", "mask", "region_hist"):
        assert torch.equal(batch[key][i], batch[key][j]), key


def test_all_undecodable_batch_is_a_clear_error() -> None:
    from pacofr.data.device_images import replace_failed

    with pytest.raises(RuntimeError, match="no image of the batch could be decoded"):
        replace_failed({"key": ["a", "b"]}, [None, None])


def test_a_tiny_run_trains_on_the_device_path(tmp_path: Path, make_shards) -> None:
    from tiny_training import tiny_module, trainer

    root = make_shards(tmp_path / "d", {"train": [12, 12], "val": [4]}, size=64)
    module = tiny_module("pacofr")
    dm = datamodule(root, True, image_size=64, batch_size=4)
    losses = []

    class Record(__import__("lightning").Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            assert batch["image"].dtype == torch.float32 and "jpeg" not in batch
            losses.append(float(outputs["loss"]))

    trainer(tmp_path, max_steps=3, callbacks=[Record()], limit_val_batches=0).fit(module, datamodule=dm)
    assert len(losses) == 3 and all(np.isfinite(losses))
