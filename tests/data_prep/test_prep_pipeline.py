"""The raw-image prep stage end to end with the offline backend: counts, alignment, contract, splits."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from data_prep import chunks
from data_prep.align import apply_affine, canonical_template
from pacofr.data.format import META_REQUIRED_KEYS, NUM_LABELS, read_manifest, sample_key


def _samples(root):
    manifest = read_manifest(root)
    for split, info in manifest.splits.items():
        for name in info.filenames:
            with tarfile.open(root / name) as tar:
                members = {m.name: tar.extractfile(m).read() for m in tar}
            keys = sorted({n.split(".", 1)[0] for n in members})
            for key in keys:
                yield split, key, members[f"{key}.jpg"], members[f"{key}.seg.png"], json.loads(members[f"{key}.json"])


def test_report_counts_every_input_by_outcome(offline_run, prep_expected):
    expected = prep_expected.outcomes
    out, summary = offline_run
    assert summary["inputs"] == sum(expected.values())
    assert summary["images"] == expected
    reasons = {e["source"]: e["reason"] for e in summary["errors"]}
    assert reasons == {
        "bad/empty.jpg": "empty_file",
        "bad/notes.txt": "not_an_image",
        "bad/random.jpg": "not_an_image",
        "bad/truncated.jpg": "truncated",
        "bad/bomb.png": "too_large",
        "bad/tiny.png": "too_small",
        "bad/faceless.png": "no_face",
    }
    # The two chunks' reports add up to the summary.
    per_chunk = [json.loads(chunks.report_path(out, i).read_text()) for i in range(2)]
    assert sum(r["inputs"] for r in per_chunk) == summary["inputs"]
    assert sum(r["faces_written"] for r in per_chunk) == summary["faces_written"] >= expected["ok"]


def test_output_passes_the_contract_reader(offline_run):
    out, summary = offline_run
    manifest = read_manifest(out, count_samples=True)
    total = sum(info.num_samples for info in manifest.splits.values())
    assert total == summary["faces_written"]
    assert manifest.image_size == 256
    prep = manifest.prep
    assert prep["backend"] == "offline"
    assert prep["detector"]["name"] == "skimage_lbp_cascade" and prep["parser"]["name"] == "geometric"
    assert prep["thresholds"]["min_score"] == 0.8 and prep["thresholds"]["keep"] == "all"
    assert {"torch", "facexlib", "scikit-image", "pillow"} <= set(prep["versions"])
    for _split, key, jpg, seg, meta in _samples(out):
        assert set(META_REQUIRED_KEYS) <= set(meta)
        assert key == sample_key(meta["source"], meta["face_index"])
        rgb, labels = Image.open(io.BytesIO(jpg)), Image.open(io.BytesIO(seg))
        assert rgb.mode == "RGB" and rgb.size == (256, 256)
        assert labels.mode == "L" and labels.size == (256, 256)
        ids = np.unique(np.asarray(labels))
        assert ids.max() < NUM_LABELS and {1, 4, 5, 10}.issubset(ids)  # skin, both eyes and nose present
        assert np.asarray(meta["landmarks5"]).shape == (5, 2) and np.asarray(meta["align_matrix"]).shape == (2, 3)


def test_real_faces_are_aligned_onto_the_template(offline_run, prep_expected):
    """Hand-marked astronaut eyes, mapped by each variant's align_matrix, land within a few pixels of the
    template's eyes; so do the recorded crop landmarks of every real face."""
    out, _ = offline_run
    template = canonical_template(256)
    eye_distance = np.hypot(*(template[1] - template[0]))
    seen = set()
    for _split, _key, _jpg, _seg, meta in _samples(out):
        if meta["source"].startswith("bad/"):
            continue
        crop_eyes = np.asarray(meta["landmarks5"])[:2]
        assert np.abs(crop_eyes - template[:2]).max() < 3.0, meta["source"]
        if meta["source"] in prep_expected.astronaut_variants and meta["face_index"] == 0:
            mapped = apply_affine(np.asarray(meta["align_matrix"]), prep_expected.astronaut_eyes)
            error = np.hypot(*(mapped - template[:2]).T)
            assert error.max() < 0.08 * eye_distance, (meta["source"], error)  # ~5 px at S=256
            seen.add(meta["source"])
    assert seen == set(prep_expected.astronaut_variants)  # every decoding variant found the face


def test_split_is_decided_by_a_stable_hash_of_the_source(offline_run):
    out, _ = offline_run
    splits = {}
    for split, _key, _jpg, _seg, meta in _samples(out):
        assert split == chunks.split_of(meta["source"], 0.3)
        splits.setdefault(meta["source"], set()).add(split)
    assert all(len(s) == 1 for s in splits.values())  # faces of one photo never straddle splits
    assert {"train", "val"} == set().union(*splits.values())


def test_a_finished_chunk_is_skipped(offline_run, raw_folder):
    from data_prep.run import PrepConfig, run_chunk

    out, _ = offline_run
    shards = sorted(out.glob("*.tar"))
    stamps = [p.stat().st_mtime_ns for p in shards]
    cfg = PrepConfig(
        input=str(raw_folder), out=str(out), num_chunks=2, chunk_index=1, backend="offline",
        val_fraction=0.3, max_per_shard=4, batch_size=4, progress=False,
    )  # fmt: skip
    assert run_chunk(cfg)["skipped"] is True
    assert [p.stat().st_mtime_ns for p in shards] == stamps
    cfg.min_face_size = 10.0  # other settings: refused, not silently mixed
    with pytest.raises(RuntimeError, match="other settings"):
        run_chunk(cfg)


def test_inspect_prints_summary_and_writes_contact_sheet(offline_run, prep_cli, tmp_path, capsys):
    out, summary = offline_run
    sheet = tmp_path / "sheet.png"
    assert prep_cli(["inspect", str(out), "--sheet", str(sheet), "--samples", "6"]) == 0
    text = capsys.readouterr().out
    assert f"faces written {summary['faces_written']}" in text
    assert "truncated" in text and "too_large" in text and "label area" in text and "skin" in text
    img = Image.open(sheet)
    assert img.width == 8 * 2 * 128 and img.height == 128 + 20


def test_demo_images_hold_detectable_pasted_faces(tmp_path):
    from data_prep.decode import decode_image
    from data_prep.demo_images import write_demo_images
    from data_prep.detect.cascade import CascadeDetector

    counts = write_demo_images(tmp_path, num_synthetic=2, seed=3)
    assert counts["synthetic"] == 2 and len(list((tmp_path / "bad").iterdir())) == counts["bad"]
    detector = CascadeDetector()
    for scene in sorted((tmp_path / "synthetic").iterdir()):
        faces = [f for f in detector.detect([decode_image(scene)])[0] if f.score >= 0.8]
        assert faces, scene.name
    # Same seed, same bytes: the demo is reproducible.
    again = tmp_path / "again"
    write_demo_images(again, num_synthetic=1, seed=3)
    assert (again / "synthetic/scene_0000.jpg").read_bytes() == (tmp_path / "synthetic/scene_0000.jpg").read_bytes()


def test_prepared_faces_feed_the_pretraining_data_module(offline_run):
    """The stage's output is a training set: PretrainDataModule streams masked, augmented batches from it."""
    from pacofr.data.datamodule import PretrainDataModule
    from pacofr.masking import StructuredMasker

    out, _ = offline_run
    dm = PretrainDataModule(
        root=str(out), batch_size=4, num_workers=0, image_size=64, masker=StructuredMasker(16, 0.75), val_split=None
    )
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["seg"].shape == (4, 64, 64)
    assert batch["mask"].sum(1).tolist() == [12] * 4
    assert int(batch["seg"].max()) < 19 and (batch["seg"] == 1).any(), "skin must be present in real faces"
    assert dm.data_stats.skipped_samples == 0
