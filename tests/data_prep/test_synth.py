"""Tests of the procedural synthetic face generator (``pacofr-prep synth``)."""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep.cli import main as prep_main
from data_prep.synth.generate import SynthConfig, render_sample, sample_scene, val_identities, write_dataset
from data_prep.synth.identity import sample_identity
from data_prep.synth.render import render
from data_prep.synth.scene import side_label
from pacofr.data.format import LABEL_IDS, META_REQUIRED_KEYS, NUM_LABELS, read_manifest, sample_key

L = LABEL_IDS


def _read_shards(root: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(root.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, SynthConfig]:
    cfg = SynthConfig(n=40, size=64, seed=3, identities=8, val_fraction=0.25)
    root = tmp_path_factory.mktemp("synth")
    write_dataset(root, cfg, shard_size=16)
    return root, cfg


def _scene(index: int, size: int = 128, **changes):
    base = sample_scene(11, index, size, identity_id=index, occluder_prob=0.0)
    return dataclasses.replace(base, **changes)


# --- determinism --------------------------------------------------------------------------------
def test_same_seed_gives_identical_shards_for_any_worker_count(dataset, tmp_path):
    root, cfg = dataset
    again = tmp_path / "again"
    write_dataset(again, cfg, shard_size=16, workers=2)
    names = sorted(p.name for p in root.glob("*.tar"))
    assert names == sorted(p.name for p in again.glob("*.tar"))
    for name in names:
        assert (root / name).read_bytes() == (again / name).read_bytes(), name


def test_different_seed_gives_different_faces():
    a_rgb, a_lab, a_meta = render_sample(1, 0, 64, 4)
    b_rgb, b_lab, b_meta = render_sample(2, 0, 64, 4)
    assert not np.array_equal(a_rgb, b_rgb)
    assert a_meta["identity_params"] != b_meta["identity_params"]


def test_write_refuses_a_folder_that_already_holds_a_dataset(dataset):
    root, cfg = dataset
    with pytest.raises(FileExistsError, match="already holds a dataset"):
        write_dataset(root, cfg)


# --- the parsing map matches the pixels ---------------------------------------------------------
def _uncast(rgb: np.ndarray, meta: dict) -> np.ndarray:
    return rgb.astype(np.float64) / np.array(meta["lighting"]["colour_cast"])


def test_labels_are_valid_ids_and_parts_have_their_colours():
    checked = 0
    for i in range(12):
        rgb, lab, meta = render_sample(5, i, 96, 12, occluder_prob=0.0)
        assert lab.dtype == np.uint8 and lab.shape == (96, 96) and rgb.shape == (96, 96, 3)
        assert lab.max() < NUM_LABELS
        img = _uncast(rgb, meta)
        skin = img[lab == L["skin"]]
        assert len(skin) > 200, "every face shows skin"
        # chromaticity of skin pixels matches the identity's skin tone (shading only scales it)
        want = np.array(meta["identity_params"]["skin_rgb"])
        chroma = np.median(skin / skin.sum(1, keepdims=True).clip(1e-6), 0)
        assert np.abs(chroma - want / want.sum()).max() < 0.03, (i, chroma, want / want.sum())
        hair = img[lab == L["hair"]]
        if meta["identity_params"]["hair_style"] != "bald" and len(hair) > 50:
            hair_want = np.array(meta["identity_params"]["hair_rgb"])
            skin_med, hair_med = np.median(skin, 0), np.median(hair, 0)
            assert np.linalg.norm(skin_med - hair_med) > 20, "hair pixels must differ from skin pixels"
            # each is closer to its own part's colour than to the other's (after removing overall brightness)
            unit = lambda v: v / np.linalg.norm(v).clip(1e-6)
            assert (
                np.linalg.norm(unit(skin_med) - unit(want)) <= np.linalg.norm(unit(skin_med) - unit(hair_want)) + 0.05
            )
            checked += 1
    assert checked >= 4


def _neighbour_pairs(lab: np.ndarray, img: np.ndarray):
    """(label_a, label_b, colour difference) for every horizontal and vertical neighbour pair."""
    out = []
    for a_lab, b_lab, a_img, b_img in (
        (lab[:, :-1], lab[:, 1:], img[:, :-1], img[:, 1:]),
        (lab[:-1], lab[1:], img[:-1], img[1:]),
    ):
        out.append((a_lab.ravel(), b_lab.ravel(), np.abs(a_img - b_img).sum(-1).ravel()))
    return [np.concatenate(x) for x in zip(*out)]


def test_label_boundaries_coincide_with_colour_edges():
    for i in range(6):
        scene = _scene(i, 128, glasses=False, hat=False)
        out = render(scene)
        la, lb, diff = _neighbour_pairs(out.labels, out.rgb.astype(np.float64))
        inside_skin = (la == L["skin"]) & (lb == L["skin"])
        smooth = np.percentile(diff[inside_skin], 99)
        assert smooth < 45, f"skin is smooth inside (99th pct step {smooth})"
        for other in ("hair", "background", "u_lip", "l_lip"):
            across = ((la == L["skin"]) & (lb == L[other])) | ((lb == L["skin"]) & (la == L[other]))
            if across.sum() >= 10:
                assert np.median(diff[across]) > smooth, f"sample {i}: no colour edge between skin and {other}"


# --- landmarks ----------------------------------------------------------------------------------
def _label_near(lab: np.ndarray, xy, radius: int) -> set[int]:
    x, y = int(round(xy[0])), int(round(xy[1]))
    h, w = lab.shape
    return set(np.unique(lab[max(0, y - radius) : min(h, y + radius + 1), max(0, x - radius) : min(w, x + radius + 1)]))


def test_landmarks_fall_on_their_regions():
    checked = 0
    for i in range(30):
        rgb, lab, meta = render_sample(7, i, 128, 30, occluder_prob=0.0)
        pose = meta["pose"]
        if abs(pose["yaw"]) > 35 or meta["accessories"]["hat"]:
            continue
        m5 = meta["landmarks5"]
        assert len(m5) == 5 and len(meta["landmarks68"]) == 68
        assert m5[0][0] < m5[1][0] and m5[3][0] < m5[4][0], "image-left points come first"
        assert L["nose"] in _label_near(lab, m5[2], 0), (i, pose)
        for corner in (m5[3], m5[4]):
            assert _label_near(lab, corner, 1) & {L["u_lip"], L["l_lip"], L["mouth"]}, (i, pose)
        if not meta["expression"]["eyes_closed"]:
            assert side_label("eye", -1) in _label_near(lab, m5[0], 0), (i, pose)
            assert side_label("eye", 1) in _label_near(lab, m5[1], 0), (i, pose)
            for j in range(36, 48):  # eye contours lie on the eye outline
                assert _label_near(lab, meta["landmarks68"][j], 1) & {L["r_eye"], L["l_eye"]}, (i, j)
        for j in range(48, 60):  # outer lip contour on the lips
            assert _label_near(lab, meta["landmarks68"][j], 1) & {L["u_lip"], L["l_lip"]}, (i, j)
        checked += 1
    assert checked >= 15


def test_faces_are_ffhq_aligned_at_256():
    rgb, lab, meta = render_sample(0, 3, 256, 8, occluder_prob=0.0)
    eyes = np.array(meta["landmarks5"][:2])
    mid = eyes.mean(0)
    assert 0.36 * 256 < mid[1] < 0.48 * 256 and 0.4 * 256 < mid[0] < 0.6 * 256
    x0, y0, x1, y1 = meta["box"]
    assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 256 and 0.3 < (x1 - x0) / 256 < 0.75
    areas = meta["label_areas"]
    assert areas["skin"] > 0.1 and areas["background"] > 0.05
    assert areas.get("hair", 0) + areas.get("hat", 0) > 0.02 or meta["identity_params"]["hair_style"] == "bald"
    assert abs(sum(areas.values()) - 1.0) < 1e-3


# --- pose ---------------------------------------------------------------------------------------
def test_yaw_hides_the_far_ear_and_moves_the_landmarks():
    for i in range(4):
        turned = {}
        for yaw in (-40.0, 0.0, 40.0):
            out = render(_scene(i, 96, yaw=yaw, pitch=0.0, roll=0.0, hat=False, earrings=False))
            turned[yaw] = out
        # positive yaw turns the face to the image right: the ear on the image right goes out of sight
        right_ear, left_ear = side_label("ear", 1), side_label("ear", -1)  # image sides
        assert (turned[40.0].labels == right_ear).sum() == 0
        assert (turned[40.0].labels == left_ear).sum() > 5
        assert (turned[-40.0].labels == left_ear).sum() == 0
        assert (turned[-40.0].labels == right_ear).sum() > 5
        nose_x = [turned[y].landmarks5[2][0] for y in (-40.0, 0.0, 40.0)]
        assert nose_x[0] < nose_x[1] < nose_x[2]
        # the nose moves further than the face centre: the projection is 3D, not a 2D shift
        eye_mid = [turned[y].landmarks5[:2].mean(0)[0] for y in (-40.0, 40.0)]
        assert (nose_x[2] - eye_mid[1]) > 0 > (nose_x[0] - eye_mid[0])
        # the far eye looks narrower than the near one
        m = turned[40.0].landmarks68
        left_w, right_w = m[39][0] - m[36][0], m[45][0] - m[42][0]
        assert right_w < left_w


def test_pitch_and_roll_change_the_projection():
    a = render(_scene(1, 96, yaw=0.0, pitch=0.0, roll=0.0))
    up = render(_scene(1, 96, yaw=0.0, pitch=20.0, roll=0.0))
    rolled = render(_scene(1, 96, yaw=0.0, pitch=0.0, roll=15.0))
    # looking up: the nose tip rises towards the eyes less than the chin... the nose-eye gap shrinks
    gap = lambda o: o.landmarks5[2][1] - o.landmarks5[:2, 1].mean()
    assert gap(up) < gap(a)
    eyes = rolled.landmarks5[:2]
    assert eyes[1][1] > eyes[0][1] + 2, "positive roll turns the face clockwise on screen"


# --- identities ---------------------------------------------------------------------------------
def test_same_identity_keeps_its_params_under_other_poses():
    n_ids = 5
    _, _, first = render_sample(9, 2, 64, n_ids)
    _, _, second = render_sample(9, 2 + n_ids, 64, n_ids)
    assert first["identity"] == second["identity"] == 2
    assert first["identity_params"] == second["identity_params"]
    assert first["pose"] != second["pose"]
    assert sample_identity(9, 2) == sample_identity(9, 2)
    assert sample_identity(9, 2) != sample_identity(9, 3)


# --- output format ------------------------------------------------------------------------------
def test_manifest_and_split_by_identity(dataset):
    root, cfg = dataset
    manifest = read_manifest(root, count_samples=True)
    assert manifest.image_size == 64 and manifest.source == "synthetic"
    assert manifest.prep["backend"] == "synthetic" and manifest.prep["generator"] == "data_prep.synth"
    assert manifest.prep["seed"] == 3
    assert manifest.split("train").num_samples + manifest.split("val").num_samples == cfg.n
    held_out = val_identities(cfg.seed, cfg.num_identities, cfg.val_fraction)
    assert len(held_out) == 2
    samples = _read_shards(root)
    assert len(samples) == cfg.n
    for shard in root.glob("*.tar"):
        split = shard.name.split("-")[0]
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    assert (meta["identity"] in held_out) == (split == "val")


def test_samples_read_with_tarfile(dataset):
    root, cfg = dataset
    for key, parts in _read_shards(root).items():
        assert set(parts) == {"jpg", "seg.png", "json"}
        meta = json.loads(parts["json"])
        for k in META_REQUIRED_KEYS + (
            "landmarks68",
            "pose",
            "identity",
            "identity_params",
            "expression",
            "lighting",
            "occluders",
            "label_areas",
        ):
            assert k in meta, k
        assert meta["synthetic"] is True and meta["parser"] == "synthetic-exact" and meta["face_index"] == 0
        assert key == sample_key(meta["source"], 0) and meta["source"].startswith("synth://seed=3/index=")
        assert meta["align_matrix"] == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
        img = Image.open(io.BytesIO(parts["jpg"]))
        seg = np.array(Image.open(io.BytesIO(parts["seg.png"])))
        assert img.size == (64, 64) and img.mode == "RGB" and seg.shape == (64, 64) and seg.max() < NUM_LABELS
        for o in meta["occluders"]:
            assert o["kind"] in ("hand", "mask", "sunglasses", "object") and isinstance(o["hidden_regions"], list)


def test_samples_read_with_webdataset(dataset):
    wds = pytest.importorskip("webdataset")
    root, cfg = dataset
    urls = [str(p) for p in sorted(root.glob("train-*.tar"))]
    count = 0
    for sample in wds.WebDataset(urls, shardshuffle=False).decode("pil"):
        assert sample["jpg"].size == (64, 64)
        seg = np.array(sample["seg.png"])
        assert seg.shape[:2] == (64, 64) and seg.max() < NUM_LABELS
        assert isinstance(sample["json"], dict) and "landmarks5" in sample["json"]
        count += 1
    assert count == read_manifest(root).split("train").num_samples


def test_occluders_are_recorded_with_what_they_hide():
    kinds = {}
    for i in range(40):
        rgb, lab, meta = render_sample(4, i, 64, 40, occluder_prob=1.0)
        assert len(meta["occluders"]) == 1
        occ = meta["occluders"][0]
        kinds[occ["kind"]] = occ
        if occ["kind"] == "sunglasses":
            assert "l_eye" in occ["hidden_regions"] or "r_eye" in occ["hidden_regions"]
            assert meta["label_areas"].get("eye_g", 0) > 0
        if occ["kind"] == "mask":
            assert {"u_lip", "l_lip"} & set(occ["hidden_regions"])
    assert set(kinds) == {"hand", "mask", "sunglasses", "object"}


# --- command line -------------------------------------------------------------------------------
def test_cli_writes_a_dataset_and_rejects_bad_arguments(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = prep_main(
        [
            "synth",
            "--out",
            str(out),
            "--n",
            "12",
            "--size",
            "64",
            "--seed",
            "1",
            "--identities",
            "3",
            "--shard-size",
            "5",
            "--occluder-prob",
            "0.5",
            "--val-fraction",
            "0.34",
            "--quiet",
        ]
    )
    assert rc == 0
    manifest = read_manifest(out, count_samples=True)
    assert manifest.split("train").num_samples + manifest.split("val").num_samples == 12
    assert manifest.prep["identities"] == 3
    assert prep_main(["synth", "--out", str(out), "--n", "4", "--size", "64", "--quiet"]) == 2
    assert "already holds a dataset" in capsys.readouterr().err
    assert prep_main(["synth", "--out", str(tmp_path / "x"), "--n", "0", "--quiet"]) == 2
    assert "n must be >= 1" in capsys.readouterr().err


def test_contact_sheet_tiles_faces_maps_and_overlays():
    from data_prep.synth.preview import contact_sheet

    sheet = contact_sheet(seed=0, count=6, size=64, columns=4)
    assert sheet.shape == (2 * 64, 4 * 3 * 64, 3) and sheet.dtype == np.uint8
    assert sheet[64:, 2 * 3 * 64 :].max() == 0, "the missing tiles of the last row are padding"


# --- fast paths agree with the straightforward definitions ---------------------------------------
def test_linear_feature_template_matches_the_parametric_definition():
    from data_prep.synth.landmarks import face_geometry, face_geometry_direct
    from data_prep.synth.template3d import Expression

    expressions = [
        Expression(mouth_open=0.0, eyes_closed=False, brows_raised=0.0),
        Expression(mouth_open=0.05, eyes_closed=True, brows_raised=0.7),  # lips apart too little for a mouth
        Expression(mouth_open=0.4, eyes_closed=False, brows_raised=1.0),
        Expression(mouth_open=1.0, eyes_closed=True, brows_raised=0.3),
    ]
    for identity in range(10):
        idp = sample_identity(21, identity)
        for expr in expressions:
            fast, direct = face_geometry(idp, expr), face_geometry_direct(idp, expr)
            assert (fast.mouth is None) == (direct.mouth is None) == (0.16 * expr.mouth_open <= 0.012)
            for name in ("eye_centres", "nose", "upper_lip", "lower_lip", "landmarks68"):
                np.testing.assert_allclose(getattr(fast, name), getattr(direct, name), atol=1e-12, err_msg=name)
            for a, b in zip(fast.eyes + fast.brows, direct.eyes + direct.brows):
                np.testing.assert_allclose(a, b, atol=1e-12)
            if fast.mouth is not None:
                np.testing.assert_allclose(fast.mouth, direct.mouth, atol=1e-12)


def test_label_map_is_read_off_the_material_map_and_eye_details_stay_in_their_eye():
    from data_prep.synth.render import MATERIAL_LABEL, rasterise
    from data_prep.synth.scene import EYE_DETAIL_MATERIALS, MATERIAL_TEETH

    seen_iris = {-1: 0, 1: 0}
    for i in range(8):
        scene = _scene(i, 128, yaw=0.0, glasses=False, hat=False)
        scene = dataclasses.replace(scene, expression=dataclasses.replace(scene.expression, eyes_closed=False))
        canvas, *_ = rasterise(scene)
        np.testing.assert_array_equal(canvas.labels, MATERIAL_LABEL[canvas.material])
        for side, (iris, pupil, _lash) in EYE_DETAIL_MATERIALS.items():
            eye = canvas.labels == side_label("eye", side)
            detail = np.isin(canvas.material, (iris, pupil))
            assert not (detail & ~eye).any()
            seen_iris[side] += int(detail.sum())
        assert not ((canvas.material == MATERIAL_TEETH) & (canvas.labels != L["mouth"])).any()
    assert seen_iris[-1] > 0 and seen_iris[1] > 0, "both eyes show an iris"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision's image IO deprecation notice
def test_label_png_is_lossless_for_every_reader():
    import cv2
    import torch
    from torchvision.io import ImageReadMode, decode_png

    from data_prep.shard_writer import encode_label_png

    rng = np.random.default_rng(0)
    maps = [
        rng.integers(0, NUM_LABELS, (37, 53), dtype=np.uint8),  # noise: worst case for run-length packing
        render_sample(2, 0, 96, 4)[1],
        np.full((8, 8), 255, np.uint8),
    ]
    for labels in maps:
        png = encode_label_png(labels)
        with Image.open(io.BytesIO(png)) as img:
            assert img.mode == "L" and img.size == labels.shape[::-1]
            np.testing.assert_array_equal(np.array(img), labels)
        np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED), labels)
        decoded = decode_png(torch.frombuffer(bytearray(png), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED)
        np.testing.assert_array_equal(decoded[0].numpy(), labels)  # the training loader's decoder
        assert encode_label_png(labels) == png, "deterministic"
    np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(encode_label_png(maps[0].astype(np.int64))))), maps[0])
    with pytest.raises(ValueError, match="0..255"):
        encode_label_png(np.array([[0, 300]]))
    with pytest.raises(ValueError, match="2-D"):
        encode_label_png(np.zeros((4, 4, 3), np.uint8))


def test_synth_jpeg_is_byte_identical_to_the_shared_encoder():
    from data_prep.shard_writer import encode_jpeg
    from data_prep.synth.generate import encode_bgr_jpeg

    rgb = render_sample(1, 3, 64, 4)[0]
    assert encode_bgr_jpeg(np.ascontiguousarray(rgb[:, :, ::-1]), 95) == encode_jpeg(rgb, 95)


def test_streams_are_keyed_deterministic_and_in_range():
    from data_prep.synth.streams import Stream

    a, b, c = Stream(1, 2, 3), Stream(1, 2, 3), Stream(1, 2, 4)
    draws = [a.random() for _ in range(5)]
    assert draws == [b.random() for _ in range(5)]
    assert draws != [c.random() for _ in range(5)]
    s = Stream(-7, 0)
    ints = [s.integer(6) for _ in range(3000)]
    assert set(ints) == set(range(6))
    normals = s.normals(2.0, 4000)
    assert abs(normals.mean()) < 0.15 and abs(normals.std() - 2.0) < 0.15
    u = s.uniforms(-1.0, 3.0, 2000)
    assert u.min() >= -1.0 and u.max() < 3.0 and abs(u.mean() - 1.0) < 0.1
    with pytest.raises(ValueError):
        s.integer(0)


def test_label_counts_match_bincount():
    from data_prep.synth.generate import label_counts

    rng = np.random.default_rng(3)
    maps = [rng.integers(0, NUM_LABELS, (31, 45), dtype=np.uint8), render_sample(0, 1, 96, 4)[1]]
    maps.append(np.full((7, 9), NUM_LABELS - 1, np.uint8))
    for labels in maps:
        np.testing.assert_array_equal(label_counts(labels), np.bincount(labels.ravel(), minlength=NUM_LABELS))
