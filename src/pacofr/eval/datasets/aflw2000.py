"""Head pose: 300W-LP (train) and AFLW2000-3D (test), both ``<name>.jpg`` + ``<name>.mat`` with ``Pose_Para``."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .base import DatasetLayoutError, Sample, check_split, landmark_box, load_rgb, require_dir

# Pose_Para = [pitch, yaw, roll, tx, ty, tz, scale], angles in radians.
POSE_LP_SUBSETS = ("AFW", "AFW_Flip", "HELEN", "HELEN_Flip", "IBUG", "IBUG_Flip", "LFPW", "LFPW_Flip")
MAX_ABS_ANGLE = 99.0  # degrees: customary filter (AFLW2000 keeps 1969 of 2000 faces)


def read_pose_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(yaw, pitch, roll)`` in degrees and the 2D landmarks ``(68, 2)`` of a 300W-LP / AFLW2000 .mat."""
    from scipy.io import loadmat  # scipy only for these and AFLW-19

    mat = loadmat(path)
    if "Pose_Para" not in mat:
        raise DatasetLayoutError(f"{path}: no Pose_Para")
    pitch, yaw, roll = np.asarray(mat["Pose_Para"], dtype=np.float64).reshape(-1)[:3] * 180.0 / math.pi
    if "pt3d_68" in mat:  # AFLW2000-3D: fitted 68 points (x, y, z)
        points = np.asarray(mat["pt3d_68"], dtype=np.float32)[:2].T
    elif "pt2d" in mat:  # 300W-LP: 2 x 68
        points = np.asarray(mat["pt2d"], dtype=np.float32).T
    else:
        raise DatasetLayoutError(f"{path}: neither pt3d_68 nor pt2d to locate the face")
    return np.array([yaw, pitch, roll], dtype=np.float32), points


class _PoseFolder:
    """Images with a .mat each; samples with any |angle| > ``max_abs_angle`` are left out and counted."""

    name = "pose"

    def __init__(self, folders: list[Path], max_abs_angle: float | None):
        self.items: list[tuple[Path, np.ndarray, np.ndarray]] = []
        self.filtered = 0  # left out by the angle filter (reported, never silent)
        for folder in folders:
            for mat in sorted(folder.glob("*.mat")):
                image = mat.with_suffix(".jpg")
                if not image.is_file():
                    raise DatasetLayoutError(f"{self.name}: no image {image.name} next to {mat}")
                pose, points = read_pose_mat(mat)
                if max_abs_angle is not None and np.abs(pose).max() > max_abs_angle:
                    self.filtered += 1
                    continue
                self.items.append((image, pose, points))
        if not self.items:
            raise DatasetLayoutError(f"{self.name}: no usable <name>.jpg + <name>.mat pair in {folders}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        image, pose, points = self.items[index]
        return {"image": load_rgb(image), "pose": pose.copy(), "landmarks": points.copy(), "box": landmark_box(points)}


class AFLW2000(_PoseFolder):
    """``<root>/image00002.jpg`` + ``image00002.mat`` ... (the AFLW2000-3D release)."""

    name = "AFLW2000"
    splits = ("test",)

    def __init__(self, root: str | os.PathLike[str], split: str = "test", max_abs_angle: float | None = MAX_ABS_ANGLE):
        check_split(split, self.splits, self.name)
        super().__init__([require_dir(Path(root), "AFLW2000 folder")], max_abs_angle)


class Pose300WLP(_PoseFolder):
    """``<root>/{AFW,AFW_Flip,HELEN,HELEN_Flip,IBUG,IBUG_Flip,LFPW,LFPW_Flip}/<name>.jpg + .mat``."""

    name = "300W-LP"
    splits = ("train",)

    def __init__(self, root: str | os.PathLike[str], split: str = "train", max_abs_angle: float | None = MAX_ABS_ANGLE):
        check_split(split, self.splits, self.name)
        folders = [Path(root) / s for s in POSE_LP_SUBSETS if (Path(root) / s).is_dir()]
        if not folders:
            raise DatasetLayoutError(f"300W-LP: none of {POSE_LP_SUBSETS} under {root}")
        super().__init__(folders, max_abs_angle)
