"""The study's probe protocol: frozen encoder features of the synthetic faces, closed-form heads.

Every encoder (pretrained or random) is read the same way (docs/study.md, "Protocol"):

- **features**: the patch tokens of the blocks at 1/3, 1/2, 2/3 and the end of the encoder (the dense
  eval heads' layers), concatenated per patch: ``(faces, patches, 4 x width)``;
- **parsing**: ridge regression from each patch token to the class shares of its 4 x 4 sub-cells, the
  scores upsampled bilinearly to pixels; mean F1 over the 18 foreground classes;
- **landmarks**: ridge regression from all patch tokens of a face (their layout kept) to the 68 points;
  NME by the outer-eye-corner distance;
- **pose**: the same, to yaw / pitch / roll; mean absolute error in degrees;
- **verification**: cosine distance of the mean patch token (standardised by the training faces),
  10-fold accuracy on balanced same / different pairs of unseen identities.

Every ridge strength is chosen on a held-out fifth of the probe's training faces (``pacofr.eval.ridge``):
no learning rate, epochs or initialisation to tune, so the probe cannot favour an arm. The ``seed`` draws
the training faces and that split. Each test score is also taken with an occluder pasted on the test faces
(the heads stay those fitted on clean faces). :func:`chance_scores` gives the no-feature row: the training
mean (pose, landmarks), the per-pixel majority map (parsing), a constant score (verification).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pacofr.data.format import LABEL_NAMES
from pacofr.eval.crop import IMAGENET_MEAN, IMAGENET_STD, crop_resize, to_tensor_image
from pacofr.eval.datasets import Occluded, SynthFaces, SynthPairs
from pacofr.eval.metrics import ParsingF1, inter_ocular, nme_per_sample, verification_accuracy
from pacofr.eval.module import default_feature_layers

from .ridge import fit_ridge

SUB_CELLS = 4  # parsing: each patch predicts the class shares of a SUB_CELLS x SUB_CELLS grid inside it
EYE_CORNERS = (36, 45)  # outer eye corners of the 68-point scheme: the NME's inter-ocular distance
NUM_CLASSES = len(LABEL_NAMES)
TASKS = ("parsing", "landmarks", "pose", "verification")
PRIMARY = {  # task -> (metric name, higher is better)
    "parsing": ("f1_mean", True),
    "landmarks": ("nme", False),
    "pose": ("mae_deg", False),
    "verification": ("accuracy", True),
}


@dataclass
class FaceSet:
    """Labels of a list of faces at the probe's image size, and (once encoded) their patch tokens."""

    seg: torch.Tensor  # (N, S, S) uint8 label ids
    landmarks: torch.Tensor  # (N, 68, 2) pixels of the S x S input
    pose: torch.Tensor  # (N, 3) degrees
    tokens: torch.Tensor | None = None  # (N, P, C) float32

    @property
    def size(self) -> int:
        return int(self.seg.shape[-1])

    def region_shares(self, grid: int) -> torch.Tensor:
        """(N, classes, grid, grid): the share of each class's pixels in every cell of a grid x grid split."""
        out = []
        for start in range(0, self.seg.shape[0], 256):
            onehot = F.one_hot(self.seg[start : start + 256].long(), NUM_CLASSES).permute(0, 3, 1, 2).float()
            out.append(F.adaptive_avg_pool2d(onehot, grid))
        return torch.cat(out)


def _samples(reader: Any, indices: list[int], size: int):
    for i in indices:
        yield crop_resize(reader[int(i)], size, use_box=False)


@torch.no_grad()
def encode_faces(
    encoder: torch.nn.Module | None,
    reader: Any,
    indices: list[int],
    size: int,
    batch_size: int,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
) -> FaceSet:
    """Read ``indices`` of ``reader`` at ``size`` px; with an ``encoder``, keep their patch tokens."""
    seg, marks, pose, tokens, batch = [], [], [], [], []
    layers = default_feature_layers(len(encoder.blocks)) if encoder is not None else []

    def flush() -> None:
        if encoder is not None and batch:
            feats = encoder.forward_intermediates(
                torch.stack(batch), indices=layers, intermediates_only=True, stop_early=True
            )
            tokens.append(torch.cat(list(feats), dim=1).flatten(2).transpose(1, 2).float())
        batch.clear()

    for sample in _samples(reader, indices, size):
        seg.append(torch.from_numpy(np.ascontiguousarray(sample["seg"])))
        marks.append(torch.from_numpy(sample["landmarks"]))
        pose.append(torch.as_tensor(sample["pose"], dtype=torch.float32))
        if encoder is not None:
            batch.append(to_tensor_image(sample["image"], mean, std))
            if len(batch) == batch_size:
                flush()
    flush()
    return FaceSet(
        seg=torch.stack(seg),
        landmarks=torch.stack(marks).float(),
        pose=torch.stack(pose),
        tokens=torch.cat(tokens) if tokens else None,
    )


@dataclass(frozen=True)
class ProbeSettings:
    """What a probe reads: training faces drawn by the seed, the test split, the occluder, the batch."""

    train_faces: int = 2000
    test_split: str = "val"
    occlusion_area: float = 0.25
    batch_size: int = 100

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> ProbeSettings:
        raw = dict(raw or {})
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        settings = cls(**raw)
        if settings.train_faces < 8 or not 0.0 < settings.occlusion_area <= 1.0 or settings.batch_size < 1:
            raise ValueError(f"need train_faces >= 8, 0 < occlusion_area <= 1, batch_size >= 1: {raw}")
        return settings


# --- scores ---------------------------------------------------------------------------------------


def parsing_f1(scores: torch.Tensor, target: FaceSet) -> float:
    """Mean foreground F1 of (N, classes, g, g) class scores upsampled to the target's pixels."""
    metric = ParsingF1(LABEL_NAMES, background=0)
    for start in range(0, scores.shape[0], 128):
        up = F.interpolate(scores[start : start + 128], size=target.size, mode="bilinear", align_corners=False)
        labels = up.permute(0, 2, 3, 1).contiguous().argmax(-1)  # channel-last: argmax over dim 1 is slow on CPU
        metric.update(labels, target.seg[start : start + 128].long())
    return metric.summary()["f1_mean"]


def landmark_nme(points: torch.Tensor, target: FaceSet) -> float:
    norm = inter_ocular(target.landmarks, *EYE_CORNERS)
    return float(nme_per_sample(points, target.landmarks, norm).mean())


def pose_mae(angles: torch.Tensor, target: FaceSet) -> dict[str, float]:
    err = (angles - target.pose).abs().mean(0)
    return {"mae_deg": float(err.mean()), **{f"mae_{a}": float(e) for a, e in zip(("yaw", "pitch", "roll"), err)}}


def pair_accuracy(distances: np.ndarray, issame: np.ndarray) -> float:
    return float(verification_accuracy(distances, issame, 10)[0])


def _cosine_distance(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return (1.0 - F.cosine_similarity(a.double(), b.double(), dim=-1)).numpy()


# --- the protocol ---------------------------------------------------------------------------------


@dataclass
class ProbeData:
    """The faces of one probe: training faces (drawn by the seed), the test split clean and occluded,
    and the verification pairs over the test split."""

    train: FaceSet
    test: FaceSet
    test_occluded: FaceSet
    pairs: list[tuple[int, int, bool]]
    train_indices: list[int]


def draw_train_indices(num_train: int, wanted: int, seed: int) -> list[int]:
    wanted = min(wanted, num_train)
    rng = np.random.default_rng([seed, 7])
    return sorted(rng.choice(num_train, size=wanted, replace=False).tolist())


def load_probe_data(
    root: str, settings: ProbeSettings, seed: int, size: int, encoder: torch.nn.Module | None = None
) -> ProbeData:
    train_reader = SynthFaces(root, "train")
    test_reader = SynthFaces(root, settings.test_split)
    pairs = SynthPairs(root, settings.test_split).pairs
    indices = draw_train_indices(len(train_reader), settings.train_faces, seed)
    everything = list(range(len(test_reader)))
    occluded = Occluded(test_reader, settings.occlusion_area, seed=0)  # the same occluders for every arm and seed
    bs = settings.batch_size
    return ProbeData(
        train=encode_faces(encoder, train_reader, indices, size, bs),
        test=encode_faces(encoder, test_reader, everything, size, bs),
        test_occluded=encode_faces(encoder, occluded, everything, size, bs),
        pairs=pairs,
        train_indices=indices,
    )


def probe_scores(data: ProbeData, seed: int) -> dict[str, Any]:
    """Fit the four heads on ``data.train`` tokens; score the clean and the occluded test faces."""
    train, tests = data.train, {"clean": data.test, "occluded": data.test_occluded}
    if train.tokens is None:
        raise ValueError("probe_scores needs encoded faces (encode_faces with an encoder)")
    n, patches, width = train.tokens.shape
    grid = int(round(patches**0.5))
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {"strengths": {}}

    # parsing: one row per patch, target = class shares of its SUB_CELLS x SUB_CELLS cells
    cells = grid * SUB_CELLS
    shares = train.region_shares(cells).view(n, NUM_CLASSES, grid, SUB_CELLS, grid, SUB_CELLS)
    targets = shares.permute(0, 2, 4, 3, 5, 1).reshape(n * patches, SUB_CELLS * SUB_CELLS * NUM_CLASSES)
    # the probe reads what the token adds to its position: targets are residuals from the per-position mean
    prior = targets.view(n, patches, -1).mean(0)
    residual = (targets.view(n, patches, -1) - prior).reshape(n * patches, -1)
    face_of_row = torch.arange(n).repeat_interleave(patches)
    fit = fit_ridge(train.tokens.reshape(n * patches, width), {"parsing": residual}, generator, groups=face_of_row)
    fit = fit["parsing"]
    out["strengths"]["parsing"] = fit.strength
    out["parsing"] = {}
    for name, test in tests.items():
        m = test.tokens.shape[0]
        pred = fit.predict(test.tokens.reshape(m * patches, width)).view(m, patches, -1) + prior
        scores = pred.view(m, grid, grid, SUB_CELLS, SUB_CELLS, NUM_CLASSES).permute(0, 5, 1, 3, 2, 4)
        out["parsing"][name] = parsing_f1(scores.reshape(m, NUM_CLASSES, cells, cells), test)

    # landmarks and pose: one row per face, all its patch tokens in their places
    flat = train.tokens.reshape(n, patches * width)
    size = train.size
    fits = fit_ridge(flat, {"landmarks": train.landmarks.reshape(n, -1) / size, "pose": train.pose}, generator)
    marks, pose = fits["landmarks"], fits["pose"]
    out["strengths"].update(landmarks=marks.strength, pose=pose.strength)
    out["landmarks"], out["pose"], out["pose_axes"] = {}, {}, {}
    for name, test in tests.items():
        test_flat = test.tokens.reshape(test.tokens.shape[0], -1)
        out["landmarks"][name] = landmark_nme(marks.predict(test_flat).view(-1, 68, 2) * size, test)
        axes = pose_mae(pose.predict(test_flat), test)
        out["pose"][name] = axes.pop("mae_deg")
        out["pose_axes"][name] = axes

    # verification: cosine distance of the standardised mean token; the second face of a pair occluded
    pooled_train = train.tokens.mean(1).double()
    mean, std = pooled_train.mean(0), pooled_train.std(0, unbiased=False).clamp_min(1e-6)
    a, b, same = (np.array(col) for col in zip(*data.pairs))
    clean = (data.test.tokens.mean(1).double() - mean) / std
    occluded = (data.test_occluded.tokens.mean(1).double() - mean) / std
    out["verification"] = {
        "clean": pair_accuracy(_cosine_distance(clean[a], clean[b]), same),
        "occluded": pair_accuracy(_cosine_distance(clean[a], occluded[b]), same),
    }
    return out


def chance_scores(data: ProbeData) -> dict[str, Any]:
    """The no-feature row: what the training labels alone predict for every test face."""
    train = data.train
    cells = data.train.size // 4
    majority = train.region_shares(cells).mean(0, keepdim=True)  # per-position class shares: the position prior
    mean_marks = train.landmarks.mean(0, keepdim=True)
    mean_pose = train.pose.mean(0, keepdim=True)
    out: dict[str, Any] = {"parsing": {}, "landmarks": {}, "pose": {}, "pose_axes": {}}
    for name, test in {"clean": data.test, "occluded": data.test_occluded}.items():
        m = test.seg.shape[0]
        out["parsing"][name] = parsing_f1(majority.expand(m, -1, -1, -1), test)
        out["landmarks"][name] = landmark_nme(mean_marks.expand(m, -1, -1), test)
        axes = pose_mae(mean_pose.expand(m, -1), test)
        out["pose"][name] = axes.pop("mae_deg")
        out["pose_axes"][name] = axes
    same = np.array([p[2] for p in data.pairs])
    constant = pair_accuracy(np.zeros(len(same)), same)  # a constant score cannot tell pairs apart
    out["verification"] = {"clean": constant, "occluded": constant}
    return out


SUITE_TASKS = {"synth_parsing": "parsing", "synth_landmarks": "landmarks", "synth_pose": "pose",
               "synth_verification": "verification"}  # fmt: skip


def synth_chance(root: str, size: int, num_train: int | None, test_split: str = "val") -> dict[str, float]:
    """The chance row of the synthetic suite (``pacofr eval --suite synth``): what the first ``num_train``
    training faces' labels alone predict for ``test_split``, per suite task, no features."""
    train_reader, test_reader = SynthFaces(root, "train"), SynthFaces(root, test_split)
    train_indices = list(range(min(num_train or len(train_reader), len(train_reader))))
    test = encode_faces(None, test_reader, list(range(len(test_reader))), size, 1)
    data = ProbeData(
        train=encode_faces(None, train_reader, train_indices, size, 1),
        test=test,
        test_occluded=test,
        pairs=SynthPairs(root, test_split).pairs,
        train_indices=train_indices,
    )
    chance = chance_scores(data)
    return {task: chance[key]["clean"] for task, key in SUITE_TASKS.items()}


def run_probe(
    encoder: torch.nn.Module, root: str, settings: ProbeSettings, seed: int, size: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(scores of ``encoder``, chance scores) on ``root``; the encoder is put in eval mode."""
    started = time.perf_counter()
    encoder.eval()
    data = load_probe_data(root, settings, seed, size, encoder)
    encoded = time.perf_counter()
    scores = probe_scores(data, seed)
    scores["seconds"] = {"encode": round(encoded - started, 1), "fit": round(time.perf_counter() - encoded, 1)}
    scores["faces"] = {"train": len(data.train_indices), "test": int(data.test.seg.shape[0]), "pairs": len(data.pairs)}
    return scores, chance_scores(data)
