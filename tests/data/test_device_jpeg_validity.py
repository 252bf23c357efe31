"""A damaged JPEG gets the same verdict on the device image path as on the CPU path: the worker rejects it (where
the CPU path would decode it) and replaces its sample whole within the batch, whatever the device's decoder would
have made of it. A truncated body is reported to decode on nvJPEG with a warning, not an error; the test stands in
for it with a decoder that does the same (libjpeg-turbo, non-strict), since these tests run on CPU tensors."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import simplejpeg
import torch
from PIL import Image

from pacofr.data import device_images
from pacofr.data.datamodule import PretrainDataModule
from pacofr.data.decode import jpeg_problem
from pacofr.data.format import KEY_IMAGE
from pacofr.masking import StructuredMasker

STD_LEVELS = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255


def body_cut_in_half(jpeg: bytes) -> bytes:
    start = jpeg.index(b"\xff\xda")
    return jpeg[: start + (len(jpeg) - start) // 2]


def last_bytes_cut(jpeg: bytes) -> bytes:
    return jpeg[:-5]


def eoi_cut(jpeg: bytes) -> bytes:
    return jpeg[:-2]


DAMAGES = {1: body_cut_in_half, 4: last_bytes_cut, 6: eoi_cut}  # sample index in the shard -> damage


def damage_shard(path: Path) -> list[str]:
    """Apply :data:`DAMAGES` to the shard's JPEGs in place; return the damaged keys."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar if m.isfile()]  # type: ignore[union-attr]
    keys = list(dict.fromkeys(m.name.split(".", 1)[0] for m, _ in members))
    targets = {f"{keys[i]}.{KEY_IMAGE}": damage for i, damage in DAMAGES.items()}
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, data in members:
            data = targets[member.name](data) if member.name in targets else data
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return [keys[i] for i in DAMAGES]


def lenient_decode(blobs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """nvJPEG's behaviour on a truncated body: decoded with a warning, the missing part filled, no error."""
    arrays = [simplejpeg.decode_jpeg(blob.numpy().tobytes(), colorspace="RGB", strict=False) for blob in blobs]
    return [torch.from_numpy(a).permute(2, 0, 1).contiguous().to(device) for a in arrays]


def first_batch(root: Path, on_device: bool) -> tuple[dict, PretrainDataModule]:
    dm = PretrainDataModule(
        root=str(root),
        batch_size=8,
        num_workers=0,
        image_size=64,
        seed=5,
        shuffle_buffer=1,
        masker=StructuredMasker(patch_size=16, mask_ratio=0.75),
        images_on_device=on_device,
    )
    batch = next(iter(dm.train_dataloader()))
    batch = dm.on_before_batch_transfer(batch, 0)  # Lightning's order: worker stats, then the device decode
    return dm.to_model_input(batch), dm


def test_damaged_jpegs_get_the_same_verdict_on_both_paths(tmp_path: Path, make_shards, monkeypatch) -> None:
    root = make_shards(tmp_path / "d", {"train": [8]}, size=64)
    damaged = damage_shard(root / "train-000000.tar")
    monkeypatch.setattr(device_images, "_decode", lenient_decode)
    cpu, cpu_dm = first_batch(root, False)
    dev, dev_dm = first_batch(root, True)
    assert cpu_dm.data_stats.decode_errors == len(damaged)  # the CPU path's verdict: all three rejected
    assert dev_dm.data_stats.decode_errors == len(damaged)
    assert not set(damaged) & set(dev["key"]), "a damaged image reached the device path's batch"
    assert cpu["key"] == dev["key"]  # replaced by the same donors
    for key in ("seg", "mask", "region_hist", "covered"):
        assert torch.equal(cpu[key], dev[key]), key
    levels = ((cpu["image"] - dev["image"]) * STD_LEVELS).abs()[..., 1:-1, 1:-1]
    assert levels.mean() < 0.5  # the donors' pixels in the replaced slots on both paths


def test_simplejpeg_rejects_the_damages() -> None:
    """The CPU path's decoder (simplejpeg, strict) rejects every damage of :data:`DAMAGES`."""
    rng = np.random.default_rng(0)
    jpeg = simplejpeg.encode_jpeg(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), quality=90)
    for damage in DAMAGES.values():
        try:
            simplejpeg.decode_jpeg(damage(jpeg), colorspace="RGB")
        except ValueError:
            continue
        raise AssertionError(f"simplejpeg accepted {damage.__name__}")


def strict_ok(data: bytes) -> bool:
    """The CPU path's verdict: simplejpeg (libjpeg-turbo) in strict mode decodes it."""
    try:
        simplejpeg.decode_jpeg(data, colorspace="RGB")
    except ValueError:
        return False
    return True


def pil_jpeg(array: np.ndarray, **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=90, **options)
    return buf.getvalue()


def sample_jpegs(face_factory) -> dict[str, bytes]:
    from data_prep.shard_writer import encode_jpeg

    face, _ = face_factory(48, np.random.default_rng(3))
    return {
        "prep": encode_jpeg(face),  # what the shards hold
        "progressive": pil_jpeg(face, progressive=True),  # several scans, tables between them
        "restart markers": pil_jpeg(face, restart_marker_blocks=2),  # RSTn inside the scan
        "grey": pil_jpeg(face[..., 1]),
        "trailing bytes": encode_jpeg(face) + b"after the EOI",  # ignored by libjpeg, and by the rule
    }


def test_the_rule_and_libjpeg_agree_on_every_cut(face_factory) -> None:
    for name, jpeg in sample_jpegs(face_factory).items():
        assert jpeg_problem(jpeg) is None and strict_ok(jpeg), name
        end = jpeg.rindex(b"\xff\xd9") + 2
        for cut in range(end):
            assert (jpeg_problem(jpeg[:cut]) is None) == strict_ok(jpeg[:cut]), (name, cut)


def test_the_rule_never_rejects_what_libjpeg_accepts(face_factory) -> None:
    """Random damage: whatever the rule rejects, the CPU path rejects too (the converse fails for damage that keeps
    the marker structure, see :func:`jpeg_problem`)."""
    rng = np.random.default_rng(0)
    damages: list[Callable[[bytearray, int], bytearray]] = [
        lambda d, p: d[:p] + bytes([d[p] ^ (1 << int(rng.integers(0, 8)))]) + d[p + 1 :],
        lambda d, p: d[:p] + bytes([int(rng.integers(0, 256))]) + d[p + 1 :],
        lambda d, p: d[:p] + d[p + int(rng.integers(1, 40)) :],
        lambda d, p: d[:p] + rng.integers(0, 256, int(rng.integers(1, 12)), dtype=np.uint8).tobytes() + d[p:],
        lambda d, p: d[:p] + b"\xff" + d[p + 1 :],
        lambda d, p: d[:p] + d[-int(rng.integers(2, 100)) :],  # the middle cut out, the end kept
    ]
    rejected = 0
    for jpeg in sample_jpegs(face_factory).values():
        for trial in range(300):
            data = bytes(damages[trial % len(damages)](bytearray(jpeg), int(rng.integers(0, len(jpeg)))))
            if jpeg_problem(data) is not None:
                rejected += 1
                assert not strict_ok(data), jpeg_problem(data)
    assert rejected > 100  # the damage does reach the rule
