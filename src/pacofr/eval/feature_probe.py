"""The study's probe protocol: frozen encoder features of the synthetic faces, closed-form heads.

Every encoder (pretrained or random) is read the same way (docs/study.md, "Protocol"):

- **features**: the patch tokens of the blocks at 1/3, 1/2, 2/3 and the end of the encoder (the dense
  eval heads' layers), concatenated per patch: ``(faces, patches, 4 x width)``; in two **views**
  (:mod:`pacofr.eval.probe_views`): ``full`` (all patches in one forward) and ``subsets`` (random 25 %
  subsets of the patches encoded alone, as MAE-style encoders were trained); every score is taken per view;
- **parsing**: ridge regression from each patch token to the class shares of its 4 x 4 sub-cells. Scored as
  the mean F1 over the 18 foreground classes of the argmax (``parsing``, the study's first score), and per
  region group (:mod:`pacofr.eval.probe_parsing`): R^2 of the shares against the position prior
  (``parsing_r2``), soft Dice (``parsing_dice``), and F1 of a calibrated labelling over the faces where the
  part is present (``parsing_f1_present``);
- **landmarks**: ridge regression from all patch tokens of a face (their layout kept) to the 68 points;
  NME by the outer-eye-corner distance;
- **pose**: the same, to yaw / pitch / roll; mean absolute error in degrees;
- **verification**: 10-fold accuracy on balanced same / different pairs of unseen identities, by the cosine
  distance of the mean patch token (standardised by the training faces; ``verification``) and of its LDA
  projection learned on the training identities (``verification_learned``, :mod:`pacofr.eval.probe_verification`).

Every ridge strength is chosen on a held-out fifth of the probe's training faces (``pacofr.eval.ridge``):
no learning rate, epochs or initialisation to tune, so the probe cannot favour an arm. The ``seed`` draws
the training faces and that split. Each test score is also taken with an occluder pasted on the test faces
(the heads stay those fitted on clean faces). :func:`chance_scores` gives the no-feature row: the training
mean (pose, landmarks), the per-pixel majority map and the per-position shares (parsing), a constant score
(verification).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pacofr.data.format import LABEL_NAMES
from pacofr.eval.datasets import Occluded, SynthFaces, SynthPairs
from pacofr.eval.metrics import ParsingF1, inter_ocular, nme_per_sample, verification_accuracy

from .probe_faces import FaceSet, ProbeData, draw_train_indices, encode_faces
from .probe_parsing import CALIBRATION_FACES, GroupShares, fit_offsets, share_scores, to_groups
from .probe_verification import fit_projection
from .probe_views import VIEWS, SubsetReading
from .ridge import fit_ridge

SUB_CELLS = 4  # parsing: each patch predicts the class shares of a SUB_CELLS x SUB_CELLS grid inside it
EYE_CORNERS = (36, 45)  # outer eye corners of the 68-point scheme: the NME's inter-ocular distance
NUM_CLASSES = len(LABEL_NAMES)
CONDITIONS = ("clean", "occluded")
TASKS = ("parsing", "landmarks", "pose", "verification")
PRIMARY = {  # task -> (metric name, higher is better)
    "parsing": ("f1_mean", True),
    "landmarks": ("nme", False),
    "pose": ("mae_deg", False),
    "verification": ("accuracy", True),
}
MEASURES = {  # every score of a view: key in the result -> (metric name, higher is better); the tasks first
    **PRIMARY,
    "parsing_r2": ("r2_vs_prior", True),
    "parsing_dice": ("soft_dice", True),
    "parsing_f1_present": ("f1_present", True),
    "verification_learned": ("accuracy_lda", True),
}


@dataclass(frozen=True)
class ProbeSettings:
    """What a probe reads: training faces drawn by the seed, the test split, the occluder, the batch, and the
    views of the encoder (``subsets``: ``subset_covers`` covers of ``visible_fraction`` of the patches)."""

    train_faces: int = 2000
    test_split: str = "val"
    occlusion_area: float = 0.25
    batch_size: int = 100
    views: tuple[str, ...] = VIEWS
    visible_fraction: float = 0.25
    subset_covers: int = 1

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> ProbeSettings:
        raw = dict(raw or {})
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        if isinstance(raw.get("views"), (list, tuple)):
            raw["views"] = tuple(str(v) for v in raw["views"])  # a YAML list; a tuple keeps the settings hashable
        settings = cls(**raw)
        if settings.train_faces < 8 or not 0.0 < settings.occlusion_area <= 1.0 or settings.batch_size < 1:
            raise ValueError(f"need train_faces >= 8, 0 < occlusion_area <= 1, batch_size >= 1: {raw}")
        views = settings.views
        if not isinstance(views, tuple) or not views or len(set(views)) < len(views) or set(views) - set(VIEWS):
            raise ValueError(f"views must be a non-empty list of distinct names from {list(VIEWS)}, got {views!r}")
        if not 0.0 < settings.visible_fraction <= 1.0 or settings.subset_covers < 1:
            raise ValueError(f"need 0 < visible_fraction <= 1 and subset_covers >= 1: {raw}")
        return settings

    @property
    def reading(self) -> SubsetReading:
        return SubsetReading(self.visible_fraction, self.subset_covers)


def measure_value(scores: dict[str, Any], measure: str, condition: str, view: str = "full") -> float | None:
    """One score of a probe result (None when that result has no such score): the ``full`` view's at the top
    level (as results before the views had them), the others' under ``views``."""
    source = scores if view == "full" else scores.get("views", {}).get(view, {})
    value = source.get(measure, {}).get(condition)
    return None if value is None else float(value)


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


def load_probe_data(
    root: str, settings: ProbeSettings, seed: int, size: int, encoder: torch.nn.Module | None = None
) -> ProbeData:
    train_reader = SynthFaces(root, "train")
    test_reader = SynthFaces(root, settings.test_split)
    pairs = SynthPairs(root, settings.test_split).pairs
    indices = draw_train_indices(len(train_reader), settings.train_faces, seed)
    everything = list(range(len(test_reader)))
    occluded = Occluded(test_reader, settings.occlusion_area, seed=0)  # the same occluders for every arm and seed
    # the same subset draw for the clean and the occluded copy of a test face: a fresh reader per list
    read = {"size": size, "batch_size": settings.batch_size, "views": settings.views, "reading": settings.reading}
    return ProbeData(
        train=encode_faces(encoder, train_reader, indices, **read),
        test=encode_faces(encoder, test_reader, everything, **read),
        test_occluded=encode_faces(encoder, occluded, everything, **read),
        pairs=pairs,
        train_indices=indices,
    )


def _sub_cells(pred: torch.Tensor, grid: int) -> torch.Tensor:
    """(m, patches, SUB_CELLS^2 x classes) per-patch predictions -> (m, cells^2, classes), cells row-major."""
    m = pred.shape[0]
    cells = grid * SUB_CELLS
    return (
        pred.view(m, grid, grid, SUB_CELLS, SUB_CELLS, NUM_CLASSES).permute(0, 1, 3, 2, 4, 5).reshape(m, cells**2, -1)
    )


def _parsing(train: FaceSet, tests: dict[str, FaceSet], generator: torch.Generator) -> dict[str, Any]:
    """One ridge per patch to its sub-cells' class shares; its predictions scored by every parsing measure."""
    n, patches, width = train.tokens.shape
    grid = int(round(patches**0.5))
    cells = grid * SUB_CELLS
    shares = train.region_shares(cells).view(n, NUM_CLASSES, grid, SUB_CELLS, grid, SUB_CELLS)
    targets = shares.permute(0, 2, 4, 3, 5, 1).reshape(n, patches, SUB_CELLS * SUB_CELLS * NUM_CLASSES)
    # the probe reads what the token adds to its position: targets are residuals from the per-position mean
    prior = targets.mean(0)
    residual = (targets - prior).reshape(n * patches, -1)
    face_of_row = torch.arange(n).repeat_interleave(patches)
    fit = fit_ridge(train.tokens.reshape(n * patches, width), {"parsing": residual}, generator, groups=face_of_row)
    fit = fit["parsing"]

    def predict(faces: FaceSet) -> torch.Tensor:  # (m, cells^2, classes): prior + what the tokens add
        m = faces.tokens.shape[0]
        return _sub_cells(fit.predict(faces.tokens.reshape(m * patches, width)).view(m, patches, -1) + prior, grid)

    def group_shares(faces: FaceSet, pred: torch.Tensor) -> GroupShares:
        return GroupShares(to_groups(pred), faces.group_shares(cells))

    # the calibrated labelling's offsets: chosen on training faces (the ridge's own; their rows outnumber its
    # weights a hundredfold, so in-sample predictions are not optimistic enough to matter)
    calibration = train.head(CALIBRATION_FACES)
    offsets = fit_offsets(group_shares(calibration, predict(calibration)))
    prior_groups = to_groups(_sub_cells(prior[None], grid))[0]
    out: dict[str, Any] = {"strength": fit.strength, **{key: {} for key in PARSING_KEYS}}
    for name, test in tests.items():
        pred = predict(test)
        out["parsing"][name] = parsing_f1(pred.transpose(1, 2).reshape(-1, NUM_CLASSES, cells, cells), test)
        _store_share_scores(out, name, share_scores(group_shares(test, pred), prior_groups, offsets))
    return out


PARSING_KEYS = ("parsing", "parsing_r2", "parsing_dice", "parsing_f1_present", "parsing_groups")


def _store_share_scores(out: dict[str, Any], condition: str, measures: dict[str, Any]) -> None:
    for key in ("r2", "dice", "f1_present"):
        out[f"parsing_{key}"][condition] = measures[key]
    out["parsing_groups"][condition] = measures["groups"]


def _landmarks_pose(train: FaceSet, tests: dict[str, FaceSet], generator: torch.Generator) -> dict[str, Any]:
    """One row per face, all its patch tokens in their places -> the 68 points and the three angles."""
    n = train.tokens.shape[0]
    flat = train.tokens.reshape(n, -1)
    size = train.size
    fits = fit_ridge(flat, {"landmarks": train.landmarks.reshape(n, -1) / size, "pose": train.pose}, generator)
    marks, pose = fits["landmarks"], fits["pose"]
    out: dict[str, Any] = {"strengths": {"landmarks": marks.strength, "pose": pose.strength}}
    out["landmarks"], out["pose"], out["pose_axes"] = {}, {}, {}
    for name, test in tests.items():
        test_flat = test.tokens.reshape(test.tokens.shape[0], -1)
        out["landmarks"][name] = landmark_nme(marks.predict(test_flat).view(-1, 68, 2) * size, test)
        axes = pose_mae(pose.predict(test_flat), test)
        out["pose"][name] = axes.pop("mae_deg")
        out["pose_axes"][name] = axes
    return out


def _verification(data: ProbeData, generator: torch.Generator) -> dict[str, Any]:
    """Cosine distance of the standardised mean token, and of its LDA projection learned on the training
    identities; the second face of a pair occluded for the occluded score."""
    pooled_train = data.train.tokens.mean(1).double()
    mean, std = pooled_train.mean(0), pooled_train.std(0, unbiased=False).clamp_min(1e-6)
    a, b, same = (np.array(col) for col in zip(*data.pairs))
    clean = (data.test.tokens.mean(1).double() - mean) / std
    occluded = (data.test_occluded.tokens.mean(1).double() - mean) / std
    out: dict[str, Any] = {
        "verification": {
            "clean": pair_accuracy(_cosine_distance(clean[a], clean[b]), same),
            "occluded": pair_accuracy(_cosine_distance(clean[a], occluded[b]), same),
        }
    }
    if data.train.identity is not None:
        project = fit_projection((pooled_train - mean) / std, data.train.identity, generator)
        clean, occluded = project(clean), project(occluded)
        out["verification_learned"] = {
            "clean": pair_accuracy(_cosine_distance(clean[a], clean[b]), same),
            "occluded": pair_accuracy(_cosine_distance(clean[a], occluded[b]), same),
        }
        out["verification_head"] = {"shrinkage": project.shrinkage, "rank": project.rank}
    return out


def probe_scores(data: ProbeData, seed: int) -> dict[str, Any]:
    """Fit the heads on ``data.train`` tokens; score the clean and the occluded test faces (one view: the
    ``tokens`` of the faces)."""
    train, tests = data.train, {"clean": data.test, "occluded": data.test_occluded}
    if train.tokens is None:
        raise ValueError("probe_scores needs encoded faces (encode_faces with an encoder)")
    generator = torch.Generator().manual_seed(seed)
    parsing = _parsing(train, tests, generator)
    out: dict[str, Any] = {"strengths": {"parsing": parsing.pop("strength")}, **parsing}
    shape = _landmarks_pose(train, tests, generator)
    out["strengths"].update(shape.pop("strengths"))
    out.update(shape)
    out.update(_verification(data, generator))
    return out


def chance_scores(data: ProbeData) -> dict[str, Any]:
    """The no-feature row: what the training labels alone predict for every test face."""
    train = data.train
    cells = data.train.size // 4  # 4-px cells: the probe's sub-cells at patch 16
    majority = train.region_shares(cells).mean(0, keepdim=True)  # per-position class shares: the position prior
    prior_groups = to_groups(majority.flatten(2).transpose(1, 2))[0]  # (cells^2, groups)
    calibration = train.head(CALIBRATION_FACES)
    offsets = fit_offsets(_prior_shares(calibration, prior_groups, cells))
    mean_marks = train.landmarks.mean(0, keepdim=True)
    mean_pose = train.pose.mean(0, keepdim=True)
    out: dict[str, Any] = {key: {} for key in (*PARSING_KEYS, "landmarks", "pose", "pose_axes")}
    for name, test in {"clean": data.test, "occluded": data.test_occluded}.items():
        m = test.seg.shape[0]
        out["parsing"][name] = parsing_f1(majority.expand(m, -1, -1, -1), test)
        _store_share_scores(out, name, share_scores(_prior_shares(test, prior_groups, cells), prior_groups, offsets))
        out["landmarks"][name] = landmark_nme(mean_marks.expand(m, -1, -1), test)
        axes = pose_mae(mean_pose.expand(m, -1), test)
        out["pose"][name] = axes.pop("mae_deg")
        out["pose_axes"][name] = axes
    same = np.array([p[2] for p in data.pairs])
    constant = pair_accuracy(np.zeros(len(same)), same)  # a constant score cannot tell pairs apart
    out["verification"] = {"clean": constant, "occluded": constant}
    out["verification_learned"] = dict(out["verification"])
    return out


def _prior_shares(faces: FaceSet, prior_groups: torch.Tensor, cells: int) -> GroupShares:
    """The position prior as every face's predicted group shares."""
    m = faces.seg.shape[0]
    return GroupShares(prior_groups.expand(m, -1, -1), faces.group_shares(cells))


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
    """(scores of ``encoder``, chance scores) on ``root``; the encoder is put in eval mode. The ``full`` view's
    scores sit at the top level of the scores, every other view's under ``views`` (:func:`measure_value`)."""
    started = time.perf_counter()
    encoder.eval()
    data = load_probe_data(root, settings, seed, size, encoder)
    encoded = time.perf_counter()
    per_view, fit_seconds = {}, {}
    for view in settings.views:
        view_started = time.perf_counter()
        per_view[view] = probe_scores(data.view(view), seed)
        fit_seconds[view] = round(time.perf_counter() - view_started, 1)
    scores = per_view.pop("full", {})
    scores["views"] = per_view
    chance_started = time.perf_counter()
    chance = chance_scores(data)
    scores["seconds"] = {
        "encode": round(encoded - started, 1),
        "fit": round(sum(fit_seconds.values()), 1),
        "fit_per_view": fit_seconds,
        "chance": round(time.perf_counter() - chance_started, 1),
    }
    patches = data.train.tokens.shape[1]
    scores["faces"] = {"train": len(data.train_indices), "test": int(data.test.seg.shape[0]), "pairs": len(data.pairs)}
    scores["reading"] = {
        "views": list(settings.views),
        "patches": patches,
        "visible_patches": settings.reading.visible(patches),
        "subset_covers": settings.subset_covers,
    }
    return scores, chance
