"""Tiny benchmark folders in each dataset's exact public layout, shared by the eval tests."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat

from pacofr.data.format import LABEL_IDS, Manifest, SplitInfo, write_manifest


def save_image(path: Path, w: int = 40, h: int = 30, value: int = 128) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.full((h, w, 3), value, np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb


def jpeg_bytes(value: int, size: int = 12) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def write_pts(path: Path, points: np.ndarray) -> None:
    body = "\n".join(f"{x:.3f} {y:.3f}" for x, y in points)
    path.write_text(f"version: 1\nn_points:  {len(points)}\n{{\n{body}\n}}\n")


def wflw_line(points: np.ndarray, box: list[int], flags: list[int], name: str) -> str:
    return " ".join([*(f"{v:.6f}" for v in points.reshape(-1)), *map(str, box), *map(str, flags), name])


def face_points(n: int, rng: np.random.Generator, lo: float = 8, hi: float = 40) -> np.ndarray:
    return rng.uniform(lo, hi, size=(n, 2))


def pose_mat(path: Path, pitch: float, yaw: float, roll: float, key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pts = np.stack([np.linspace(10, 40, 68), np.linspace(12, 44, 68)])
    extra = {"pt3d_68": np.concatenate([pts, np.zeros((1, 68))])} if key == "pt3d_68" else {"pt2d": pts}
    savemat(path, {"Pose_Para": np.array([[pitch, yaw, roll, 1, 2, 3, 0.001]]), **extra})


# --- whole datasets (a few samples per split) for the LightningModule tests ------------------------


def write_lapa(root: Path, n: int = 3) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for i in range(n):
            save_image(root / split / "images" / f"{i}.jpg", 48, 48, 30 * i)
            seg = rng.integers(0, 11, size=(48, 48), dtype=np.uint8)
            (root / split / "labels").mkdir(parents=True, exist_ok=True)
            Image.fromarray(seg).save(root / split / "labels" / f"{i}.png")
            (root / split / "landmarks").mkdir(parents=True, exist_ok=True)
            pts = "\n".join(f"{x:.2f} {y:.2f}" for x, y in face_points(106, rng))
            (root / split / "landmarks" / f"{i}.txt").write_text(f"106\n{pts}\n")


def write_celebamask(root: Path) -> None:
    rows = ["idx orig_idx orig_file"]
    for hq, orig in ((0, 1), (1, 2), (2, 170000), (3, 190000)):
        rows.append(f"{hq} {orig - 1} {orig:06d}.jpg")
        save_image(root / "CelebA-HQ-img" / f"{hq}.jpg", 64, 64, 50 * hq)
        folder = root / "CelebAMask-HQ-mask-anno" / str(hq // 2000)
        folder.mkdir(parents=True, exist_ok=True)
        mask = np.zeros((512, 512), np.uint8)
        mask[100:400, 100:400] = 255
        Image.fromarray(mask).save(folder / f"{hq:05d}_skin.png")
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text("\n".join(rows) + "\n")


def write_300w(root: Path) -> None:
    rng = np.random.default_rng(1)
    for folder in ("afw", "helen/trainset", "lfpw/trainset", "helen/testset", "lfpw/testset", "ibug"):
        for i in range(2):
            save_image(root / folder / f"image_{i:04d}.jpg", 48, 48, 60 * i)
            write_pts(root / folder / f"image_{i:04d}.pts", face_points(68, rng))


def write_wflw(root: Path) -> None:
    rng = np.random.default_rng(2)
    anno = root / "WFLW_annotations" / "list_98pt_rect_attr_train_test"
    anno.mkdir(parents=True)
    for part in ("train", "test"):
        lines = []
        for i in range(6):
            name = f"0--Parade/{part}_{i}.jpg"
            save_image(root / "WFLW_images" / name, 48, 48, 20 * i)
            flags = [int(i % 6 == k) for k in range(6)]  # one face per attribute
            lines.append(wflw_line(face_points(98, rng), [6, 6, 42, 42], flags, name))
        (anno / f"list_98pt_rect_attr_{part}.txt").write_text("\n".join(lines) + "\n")


_AFLW_MAT_CACHE: dict[int, bytes] = {}


def write_aflw19(root: Path, n: int = 20004) -> None:
    """AFLWinfo_release.mat needs >= 20000 entries (the split is fixed); writing that cell array is
    slow, so the file is built once per session and copied."""
    root.mkdir(parents=True, exist_ok=True)
    names = [f"{i}/image{i:05d}.jpg" for i in range(4)]
    for i, name in enumerate(names):
        save_image(root / "data" / "flickr" / name, 48, 48, 40 * i)
    if n not in _AFLW_MAT_CACHE:
        _AFLW_MAT_CACHE[n] = _aflw_mat_bytes(n)
    (root / "AFLWinfo_release.mat").write_bytes(_AFLW_MAT_CACHE[n])


def _aflw_mat_bytes(n: int) -> bytes:
    rng = np.random.default_rng(3)
    names = np.empty((n, 1), dtype=object)
    for i in range(n):
        names[i, 0] = f"{i % 4}/image{i % 4:05d}.jpg"  # 4 image files shared by all entries
    pts = face_points(19, rng, 10, 40)
    data = np.tile(np.concatenate([pts[:, 0], pts[:, 1]]), (n, 1))
    bbox = np.tile([6.0, 44.0, 6.0, 44.0], (n, 1))
    ra = rng.permutation(n).reshape(1, -1) + 1
    buf = io.BytesIO()
    savemat(buf, {"nameList": names, "data": data, "bbox": bbox, "mask_new": np.ones((n, 19)), "ra": ra})
    return buf.getvalue()


def write_aflw2000(root: Path, n: int = 3) -> None:
    for i in range(n):
        save_image(root / f"image{i:05d}.jpg", 48, 48, 40 * i)
        pose_mat(root / f"image{i:05d}.mat", 0.1 * i, -0.2 * i, 0.05, key="pt3d_68")


def write_300w_lp(root: Path, n: int = 3) -> None:
    for i in range(n):
        save_image(root / "AFW" / f"AFW_{i}_1_0.jpg", 48, 48, 40 * i)
        pose_mat(root / "AFW" / f"AFW_{i}_1_0.mat", 0.1 * i, 0.3 - 0.2 * i, -0.05, key="pt2d")


def write_verification_bin(path: Path, n_pairs: int = 10) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    bins, issame = [], []
    for i in range(n_pairs):
        same = i % 2 == 0
        bins += [jpeg_bytes(10 * i, 24), jpeg_bytes(10 * i if same else 255 - 10 * i, 24)]
        issame.append(same)
    path.write_bytes(pickle.dumps((bins, issame), protocol=2))


def write_celeba(root: Path, n: int = 9) -> None:
    names = [f"attr_{i}" for i in range(40)]
    rng = np.random.default_rng(4)
    rows, parts = [], []
    for i in range(1, n + 1):
        rows.append(f"{i:06d}.jpg " + " ".join(str(v) for v in rng.choice([-1, 1], 40)))
        parts.append(f"{i:06d}.jpg {i % 3}")
        save_image(root / "img_align_celeba" / f"{i:06d}.jpg", 44, 54, 25 * i)
    (root / "list_attr_celeba.txt").write_text(f"{n}\n" + " ".join(names) + "\n" + "\n".join(rows) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(parts) + "\n")


def write_rafdb(root: Path, n: int = 4) -> None:
    lines = []
    for split, width in (("train", 5), ("test", 4)):
        for i in range(1, n + 1):
            name = f"{split}_{i:0{width}d}"
            lines.append(f"{name}.jpg {1 + i % 7}")
            save_image(root / "Image" / "aligned" / f"{name}_aligned.jpg", 100, 100, 30 * i)
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")


def write_synth(root: Path, identities: list[int], size: int = 32) -> None:
    """A pacofr-faces/1 dataset with the synth generator's per-sample json keys."""
    from data_prep.shard_writer import ShardSink, encode_jpeg, encode_label_png
    from pacofr.data.format import sample_key

    rng = np.random.default_rng(0)
    splits = {}
    for split in ("train", "val"):
        with ShardSink(root, split, max_per_shard=3) as sink:
            for i, ident in enumerate(identities):
                seg = np.zeros((size, size), np.uint8)
                seg[8:24, 8:24] = LABEL_IDS["skin"]
                pts = rng.uniform(4, size - 4, size=(68, 2))
                meta = {
                    "source": f"synth/{split}/{i}",
                    "face_index": 0,
                    "box": [0, 0, size, size],
                    "score": 1.0,
                    "landmarks5": pts[:5].tolist(),
                    "landmarks68": pts.tolist(),
                    "align_matrix": [[1, 0, 0], [0, 1, 0]],
                    "parser": "synth",
                    "pose": {"yaw": 10.0 * i, "pitch": -5.0, "roll": 2.0},
                    "identity": ident,
                    "occluders": [],
                }
                rgb = np.full((size, size, 3), 40 * ident % 256, np.uint8)
                sink.write(sample_key(meta["source"], 0), encode_jpeg(rgb), encode_label_png(seg), meta)
        files = sink.written
        splits[split] = SplitInfo(len(identities), [f for f, _ in files], [n for _, n in files])
    write_manifest(root, Manifest(image_size=size, splits=splits, source="test"))


# task name -> (writer of the test root, writer of a separate train root or None)
WRITERS = {
    "lapa": (write_lapa, None),
    "celebamask_hq": (write_celebamask, None),
    "300w": (write_300w, None),
    "wflw": (write_wflw, None),
    "aflw19": (write_aflw19, None),
    "aflw2000": (write_aflw2000, write_300w_lp),
    "lfw": (lambda root: write_verification_bin(root / "lfw.bin"), None),
    "cfp_fp": (lambda root: write_verification_bin(root / "cfp_fp.bin"), None),
    "agedb_30": (lambda root: write_verification_bin(root / "agedb_30.bin"), None),
    "celeba_attr": (write_celeba, None),
    "rafdb": (write_rafdb, None),
    "synth_parsing": (lambda root: write_synth(root, list(range(6)) * 2), None),
    "synth_landmarks": (lambda root: write_synth(root, list(range(6)) * 2), None),
    "synth_pose": (lambda root: write_synth(root, list(range(6)) * 2), None),
    "synth_verification": (lambda root: write_synth(root, list(range(6)) * 2), None),
}


def write_pretraining_checkpoint(path: Path, img_size: int = 32):
    """A Lightning checkpoint shaped like pacofr's pretraining output: a tiny timm ViT under
    ``model.encoder.``, another module beside it, and the hyper-parameters naming the encoder."""
    import timm
    import torch

    torch.manual_seed(0)
    encoder = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=img_size)
    state = {f"model.encoder.{k}": v for k, v in encoder.state_dict().items()}
    state["model.decoder.proj.weight"] = torch.randn(4, 4)
    hp = {"encoder_size": "tiny", "img_size": img_size, "patch_size": 16}
    torch.save({"state_dict": state, "hyper_parameters": hp}, path)
    return encoder
