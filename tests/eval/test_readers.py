"""Every benchmark reader on a tiny fixture written in the dataset's exact public layout."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from eval_layouts import jpeg_bytes, pose_mat, save_image, wflw_line, write_pts, write_synth
from PIL import Image
from scipy.io import savemat

from pacofr.data.format import LABEL_IDS
from pacofr.eval.datasets import (
    AFLW19,
    AFLW2000,
    IBUG300W,
    RAFDB,
    WFLW,
    CelebAAttributes,
    CelebAMaskHQ,
    DatasetLayoutError,
    LaPa,
    Occluded,
    Pose300WLP,
    SynthFaces,
    SynthPairs,
    VerificationBin,
)
from pacofr.eval.datasets.ibug300w import read_pts

# --- face parsing ---------------------------------------------------------------------------


def test_lapa(tmp_path):
    root = tmp_path / "LaPa"
    seg = np.arange(11, dtype=np.uint8).repeat(4).reshape(4, 11)  # ids 0..10
    for split, names in (("train", ["a", "b"]), ("test", ["c"])):
        for name in names:
            save_image(root / split / "images" / f"{name}.jpg", 11, 4)
            (root / split / "labels").mkdir(parents=True, exist_ok=True)
            Image.fromarray(seg).save(root / split / "labels" / f"{name}.png")
            (root / split / "landmarks").mkdir(parents=True, exist_ok=True)
            pts = "\n".join(f"{i}.5 {2 * i}.25" for i in range(106))
            (root / split / "landmarks" / f"{name}.txt").write_text(f"106\n{pts}\n")
    ds = LaPa(root, "train")
    assert len(ds) == 2 and len(LaPa(root, "test")) == 1
    s = ds[0]
    assert s["image"].shape == (4, 11, 3) and s["image"].dtype == np.uint8
    np.testing.assert_array_equal(s["seg"], seg)
    assert s["landmarks"].shape == (106, 2) and s["landmarks"][3].tolist() == [3.5, 6.25]
    assert ds.label_names[10] == "hair" and len(ds.label_names) == 11
    (root / "train" / "labels" / "b.png").unlink()
    with pytest.raises(DatasetLayoutError, match="b.jpg"):
        LaPa(root, "train")
    with pytest.raises(DatasetLayoutError, match="val"):
        LaPa(root, "val")


def test_celebamask_hq_merges_parts_into_the_19_labels(tmp_path):
    root = tmp_path / "CelebAMask-HQ"
    (root / "CelebA-HQ-to-CelebA-mapping.txt").parent.mkdir(parents=True)
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text(
        "idx         orig_idx    orig_file\n"
        "0           119613      119614.jpg\n"
        "2001        170000      170001.jpg\n"
        "2002        190000      190001.jpg\n"
    )
    for hq in (0, 2001, 2002):
        save_image(root / "CelebA-HQ-img" / f"{hq}.jpg", 64, 64)  # (1024 in the release; resized to 512)
    anno = root / "CelebAMask-HQ-mask-anno"

    def part(hq: int, name: str, region: tuple[slice, slice], rgb: bool = False) -> None:
        mask = np.zeros((512, 512), np.uint8)
        mask[region] = 255
        folder = anno / str(hq // 2000)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.stack([mask] * 3, -1) if rgb else mask).save(folder / f"{hq:05d}_{name}.png")

    part(0, "skin", (slice(100, 400), slice(100, 400)))
    part(0, "hair", (slice(0, 150), slice(0, 512)), rgb=True)  # 3-channel mask file, overlaps skin
    part(0, "l_eye", (slice(200, 220), slice(150, 180)))
    part(2001, "neck", (slice(400, 512), slice(200, 300)))

    train = CelebAMaskHQ(root, "train")
    assert train.ids == [0] and CelebAMaskHQ(root, "val").ids == [2001] and CelebAMaskHQ(root, "test").ids == [2002]
    s = train[0]
    assert s["image"].shape == (512, 512, 3)
    seg = s["seg"]
    assert seg[120, 200] == LABEL_IDS["hair"]  # hair painted over skin
    assert seg[300, 300] == LABEL_IDS["skin"]
    assert seg[210, 160] == LABEL_IDS["l_eye"]
    assert seg[450, 450] == LABEL_IDS["background"]
    assert set(np.unique(seg)) == {0, LABEL_IDS["skin"], LABEL_IDS["hair"], LABEL_IDS["l_eye"]}
    assert CelebAMaskHQ(root, "val")[0]["seg"][450, 250] == LABEL_IDS["neck"]  # folder 2001 // 2000 = 1
    # An explicit partition file overrides the fixed CelebA boundaries.
    (root / "list_eval_partition.txt").write_text("119614.jpg 2\n170001.jpg 0\n190001.jpg 0\n")
    assert CelebAMaskHQ(root, "train").ids == [2001, 2002]


# --- alignment ------------------------------------------------------------------------------


def test_300w_splits_and_pts(tmp_path):
    root = tmp_path / "300W"
    rng = np.random.default_rng(0)
    layout = {
        "afw": ("1051618982_1.jpg",),
        "helen/trainset": ("100032540_1.jpg",),
        "lfpw/trainset": ("image_0001.png", "image_0002.png"),
        "helen/testset": ("296814969_3.jpg",),
        "lfpw/testset": ("image_0001.png",),
        "ibug": ("image_003_1.jpg",),
    }
    for folder, names in layout.items():
        for name in names:
            save_image(root / folder / name, 60, 50)
            write_pts((root / folder / name).with_suffix(".pts"), rng.uniform(1, 50, size=(68, 2)))
    sizes = {split: len(IBUG300W(root, split)) for split in IBUG300W.splits}
    assert sizes == {"train": 4, "common": 2, "challenging": 1, "full": 3}
    s = IBUG300W(root, "challenging")[0]
    raw = np.asarray([ln.split() for ln in (root / "ibug/image_003_1.pts").read_text().splitlines()[3:71]], float)
    np.testing.assert_allclose(s["landmarks"], raw - 1.0, atol=1e-4)  # 1-based -> 0-based
    np.testing.assert_allclose(s["box"], [*s["landmarks"].min(0), *s["landmarks"].max(0)])
    bad = tmp_path / "bad.pts"
    bad.write_text("version: 1\nn_points: 3\n{\n1 2\n}\n")
    with pytest.raises(ValueError, match="3 points"):
        read_pts(bad)


def test_wflw_attribute_subsets(tmp_path):
    root = tmp_path / "WFLW"
    anno = root / "WFLW_annotations" / "list_98pt_rect_attr_train_test"
    anno.mkdir(parents=True)
    pts = np.stack([np.linspace(10, 50, 98), np.linspace(5, 45, 98)], 1)
    names = ["51--Dresses/51_Dresses_wearingdress_51_377.jpg", "0--Parade/0_Parade_marchingband_1_116.jpg"]
    for n in names:
        save_image(root / "WFLW_images" / n, 64, 64)
    (anno / "list_98pt_rect_attr_train.txt").write_text(wflw_line(pts, [8, 4, 52, 47], [0] * 6, names[0]) + "\n")
    test_lines = [
        wflw_line(pts, [8, 4, 52, 47], [1, 0, 0, 0, 1, 0], names[0]),  # large pose + occlusion
        wflw_line(pts + 1, [9, 5, 53, 48], [0, 1, 0, 0, 0, 0], names[1]),  # expression
    ]
    (anno / "list_98pt_rect_attr_test.txt").write_text("\n".join(test_lines) + "\n")
    assert len(WFLW(root, "train")) == 1 and len(WFLW(root, "test")) == 2
    assert len(WFLW(root, "test_pose")) == 1 and len(WFLW(root, "test_occlusion")) == 1
    assert len(WFLW(root, "test_expression")) == 1
    s = WFLW(root, "test_expression")[0]
    np.testing.assert_allclose(s["landmarks"], pts + 1, atol=1e-5)
    assert s["box"].tolist() == [9, 5, 53, 48] and s["image"].shape == (64, 64, 3)
    with pytest.raises(DatasetLayoutError):
        WFLW(root, "test_blur")  # no blurred face in the fixture
    (anno / "list_98pt_rect_attr_train.txt").write_text("1 2 3 foo.jpg\n")
    with pytest.raises(ValueError, match="207"):
        WFLW(root, "train")


def test_aflw19_mat(tmp_path):
    root = tmp_path / "AFLW"
    n = 20003  # 20000 train + 3 test, as the release's ra permutation splits them
    names = np.empty((n, 1), dtype=object)
    for i in range(n):
        names[i, 0] = f"{i % 3}/image{i:05d}.jpg"
    data = np.tile(np.concatenate([np.arange(1, 20), np.arange(101, 120)]).astype(float), (n, 1))
    bbox = np.tile([11.0, 51.0, 21.0, 81.0], (n, 1))  # left right top bottom (1-based)
    mask = np.ones((n, 19))
    ra = np.arange(n, 0, -1).reshape(1, -1)  # reversed: test = samples 2, 1, 0 (1-based 3, 2, 1)
    mask[1, 5] = 0  # sample 1 (a test face) has a hidden point: not frontal
    root.mkdir()
    savemat(root / "AFLWinfo_release.mat", {"nameList": names, "data": data, "bbox": bbox, "mask_new": mask, "ra": ra})
    for i in (0, 1, 2):
        save_image(root / "data" / "flickr" / names[i, 0], 60, 60)
    test = AFLW19(root, "test")
    assert len(AFLW19(root, "train")) == 20000 and len(test) == 3
    assert test.indices.tolist() == [2, 1, 0]
    assert AFLW19(root, "test_frontal").indices.tolist() == [2, 0]
    s = test[0]
    assert s["landmarks"].shape == (19, 2)
    assert s["landmarks"][0].tolist() == [0.0, 100.0] and s["landmarks"][18].tolist() == [18.0, 118.0]
    assert s["box"].tolist() == [10.0, 20.0, 50.0, 80.0]  # x1 y1 x2 y2, 0-based


def test_aflw2000_pose_in_degrees_and_angle_filter(tmp_path):
    root = tmp_path / "AFLW2000"
    for name, angles in (("image00002", (0.1, -0.5, 0.2)), ("image00004", (0.0, 1.8, 0.0))):  # 1.8 rad > 99 deg
        save_image(root / f"{name}.jpg", 50, 50)
        pose_mat(root / f"{name}.mat", *angles, key="pt3d_68")
    ds = AFLW2000(root)
    assert len(ds) == 1 and ds.filtered == 1
    s = ds[0]
    np.testing.assert_allclose(s["pose"], np.degrees([-0.5, 0.1, 0.2]), rtol=1e-5)  # yaw, pitch, roll
    assert s["box"].tolist() == pytest.approx([10, 12, 40, 44])
    assert len(AFLW2000(root, max_abs_angle=None)) == 2


def test_300w_lp(tmp_path):
    root = tmp_path / "300W_LP"
    for sub, name in (("AFW", "AFW_134212_1_0"), ("HELEN_Flip", "HELEN_232194_1_3")):
        save_image(root / sub / f"{name}.jpg", 50, 50)
        pose_mat(root / sub / f"{name}.mat", 0.2, 0.3, -0.1, key="pt2d")
    ds = Pose300WLP(root)
    assert len(ds) == 2
    assert ds[1]["pose"] == pytest.approx(np.degrees([0.3, 0.2, -0.1]).astype(np.float32))
    with pytest.raises(DatasetLayoutError):
        Pose300WLP(tmp_path / "empty")


# --- verification, attributes, expression ---------------------------------------------------------


def test_verification_bin_pairs(tmp_path):
    bins = [jpeg_bytes(v) for v in (10, 10, 200, 60)]
    (tmp_path / "lfw.bin").write_bytes(pickle.dumps((bins, [True, False]), protocol=2))
    ds = VerificationBin(tmp_path, "lfw")
    assert len(ds) == 2
    s = ds[1]
    assert s["issame"] is False and s["index"] == 1
    assert abs(int(s["image"][0, 0, 0]) - 200) < 5 and abs(int(s["image_b"][0, 0, 0]) - 60) < 5
    with pytest.raises(DatasetLayoutError, match="cfp_fp.bin"):
        VerificationBin(tmp_path, "cfp_fp")


def test_celeba_attributes(tmp_path):
    root = tmp_path / "celeba"
    names = [f"a{i}" for i in range(40)]
    rows = ["000001.jpg " + " ".join(["1", "-1"] * 20), "000002.jpg " + " ".join(["-1"] * 40)]
    rows.append("000003.jpg  " + "  ".join(["-1", "1"] * 20))  # double spaces as in the release
    (root / "Anno").mkdir(parents=True)
    (root / "Anno" / "list_attr_celeba.txt").write_text("3\n" + " ".join(names) + "\n" + "\n".join(rows) + "\n")
    (root / "Eval").mkdir()
    (root / "Eval" / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 1\n000003.jpg 2\n")
    for i in (1, 2, 3):
        save_image(root / "Img" / "img_align_celeba" / f"{i:06d}.jpg", 178, 218)
    train, test = CelebAAttributes(root, "train"), CelebAAttributes(root, "test")
    assert len(train) == 1 and len(CelebAAttributes(root, "val")) == 1
    assert train[0]["attrs"].tolist() == [1, 0] * 20
    assert test[0]["attrs"].tolist() == [0, 1] * 20 and test[0]["image"].shape == (218, 178, 3)


def test_rafdb(tmp_path):
    root = tmp_path / "basic"
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text(
        "train_00001.jpg 5\ntrain_00002.jpg 1\ntest_0001.jpg 7\n"
    )
    for stem in ("train_00001", "train_00002", "test_0001"):
        save_image(root / "Image" / "aligned" / f"{stem}_aligned.jpg", 100, 100)
    train, test = RAFDB(root, "train"), RAFDB(root, "test")
    assert [train[i]["label"] for i in range(2)] == [4, 0] and test[0]["label"] == 6
    assert RAFDB.label_names[4] == "sadness"


# --- synthetic shards and occlusion --------------------------------------------------------------


def test_synth_faces_and_pairs(tmp_path):
    write_synth(tmp_path, [0, 0, 1, 1, 2, 3, 3])
    ds = SynthFaces(tmp_path, "val")
    assert len(ds) == 7
    s = ds[2]
    assert s["image"].shape == (32, 32, 3) and s["seg"][10, 10] == LABEL_IDS["skin"]
    assert s["landmarks"].shape == (68, 2) and s["pose"].tolist() == [20.0, -5.0, 2.0] and s["identity"] == 1
    pairs = SynthPairs(tmp_path, "val", max_pairs=6)
    ids = ds.identities()
    assert len(pairs) == 6
    assert [p[2] for p in pairs.pairs] == [True, False] * 3
    assert all((ids[a] == ids[b]) == same and a != b for a, b, same in pairs.pairs)
    assert pairs[0]["issame"] is True


def test_occluder_is_deterministic_and_inside_the_box():
    class One:
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return {"image": np.zeros((64, 64, 3), np.uint8), "box": np.array([16, 16, 48, 48], np.float32)}

    a, b = Occluded(One(), area=0.3, seed=1)[0], Occluded(One(), area=0.3, seed=1)[0]
    np.testing.assert_array_equal(a["image"], b["image"])
    changed = a["image"].any(-1)
    assert changed.sum() > 0.1 * 32 * 32
    ys, xs = np.nonzero(changed)
    assert ys.min() >= 16 and ys.max() <= 48 and xs.min() >= 16 and xs.max() <= 48
    assert not math.isclose(changed.mean(), 0.0)


@pytest.mark.parametrize("viewer_named", [True, False])
def test_lapa_sides_are_the_subjects(tmp_path, viewer_named):
    """pacofr's ``l_eye`` is the person's left eye (on the image's right) in every reader: a LaPa whose "left"
    classes lie on the image's left (named from the viewer) gets its brow and eye pairs swapped."""
    from PIL import Image

    from pacofr.eval.datasets.lapa import LaPa

    base = tmp_path / "test"
    for folder in ("images", "labels", "landmarks"):
        (base / folder).mkdir(parents=True)
    for i in range(3):
        seg = np.zeros((40, 40), np.uint8)
        left_side, right_side = (slice(5, 15), slice(25, 35)) if viewer_named else (slice(25, 35), slice(5, 15))
        seg[10:14, left_side], seg[10:14, right_side] = 4, 5  # LaPa's "left eye" / "right eye"
        seg[5:8, left_side], seg[5:8, right_side] = 2, 3
        Image.fromarray(seg).save(base / "labels" / f"{i}.png")
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(base / "images" / f"{i}.jpg")
        (base / "landmarks" / f"{i}.txt").write_text("106\n" + "1 1\n" * 106)
    reader = LaPa(tmp_path, "test")
    assert reader.swapped_sides == viewer_named
    seg = reader[0]["seg"]
    assert np.nonzero(seg == 4)[1].mean() > 20 and np.nonzero(seg == 2)[1].mean() > 20  # subject's left: image right
    assert np.nonzero(seg == 5)[1].mean() < 20 and np.nonzero(seg == 3)[1].mean() < 20
