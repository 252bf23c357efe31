"""The benchmark tasks: which reader and splits, which head, loss and metrics, and how a raw
sample becomes a batch entry. One :class:`TaskSpec` per public benchmark plus the synthetic suite."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MultilabelAccuracy

from pacofr.data.format import LABEL_NAMES

from .crop import IMAGENET_MEAN, IMAGENET_STD, crop_resize, to_tensor_image
from .datasets.base import Sample
from .datasets.lapa import LAPA_LABELS
from .datasets.rafdb import RAFDB_CLASSES
from .datasets.wflw import ATTRIBUTES as WFLW_ATTRIBUTES
from .heads import LandmarkHead, ParsingHead, PooledHead
from .metrics import NME, ParsingF1, PoseMAE, VerificationAccuracy, box_diagonal, box_size, inter_ocular

Kind = Literal["parsing", "landmarks", "pose", "classification", "attributes", "verification"]
POSE_SCALE = 90.0  # degrees: the pose head predicts angle / 90


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: Kind
    reader: str  # key of pacofr.eval.datasets.READERS for the test (and train) data
    test_splits: tuple[str, ...]
    train_split: str | None = "train"
    val_split: str | None = None
    train_reader: str | None = None  # a different training set (300W-LP for AFLW2000)
    num_outputs: int = 0  # classes, points, attributes; 3 for pose
    label_names: tuple[str, ...] = ()
    nme_norms: tuple[str, ...] = ()  # "inter_ocular", "box", "diagonal"
    eye_ids: tuple[int, int] = (0, 0)  # outer eye corners for the inter-ocular norm
    use_box: bool = True  # crop around the face box (else the whole image)
    box_scale: float = 1.25
    primary: str = ""  # the headline metric, for the occlusion drop
    higher_is_better: bool = True
    reader_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def dense(self) -> bool:
        return self.kind in ("parsing", "landmarks")


def _landmarks(name, reader, points, norms, eyes, tests, **kw) -> TaskSpec:
    return TaskSpec(
        name,
        "landmarks",
        reader,
        tests,
        num_outputs=points,
        nme_norms=norms,
        eye_ids=eyes,
        primary=f"nme_{norms[0]}",
        higher_is_better=False,
        **kw,
    )


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec(
            "lapa",
            "parsing",
            "lapa",
            ("test",),
            val_split="val",
            num_outputs=11,
            label_names=LAPA_LABELS,
            use_box=False,
            primary="f1_mean",
        ),
        TaskSpec(
            "celebamask_hq",
            "parsing",
            "celebamask_hq",
            ("test",),
            val_split="val",
            num_outputs=19,
            label_names=LABEL_NAMES,
            use_box=False,
            primary="f1_mean",
        ),
        _landmarks("300w", "300w", 68, ("inter_ocular",), (36, 45), ("common", "challenging", "full")),
        _landmarks(
            "wflw", "wflw", 98, ("inter_ocular",), (60, 72), ("test",) + tuple(f"test_{a}" for a in WFLW_ATTRIBUTES)
        ),
        _landmarks("aflw19", "aflw19", 19, ("diagonal", "box"), (6, 11), ("test", "test_frontal")),
        TaskSpec(
            "aflw2000",
            "pose",
            "aflw2000",
            ("test",),
            train_reader="300w_lp",
            num_outputs=3,
            primary="mae",
            higher_is_better=False,
            box_scale=1.4,
        ),
        *[
            TaskSpec(b, "verification", "verification_bin", (b,), train_split=None, use_box=False, primary="accuracy")
            for b in ("lfw", "cfp_fp", "agedb_30")
        ],
        TaskSpec(
            "celeba_attr",
            "attributes",
            "celeba_attr",
            ("test",),
            val_split="val",
            num_outputs=40,
            use_box=False,
            primary="accuracy",
        ),
        TaskSpec(
            "rafdb",
            "classification",
            "rafdb",
            ("test",),
            num_outputs=7,
            label_names=RAFDB_CLASSES,
            use_box=False,
            primary="accuracy",
        ),
        # The synthetic suite: 'val' is the held-out split of a pacofr-prep synth dataset.
        TaskSpec(
            "synth_parsing",
            "parsing",
            "synth",
            ("val",),
            num_outputs=19,
            label_names=LABEL_NAMES,
            use_box=False,
            primary="f1_mean",
        ),
        _landmarks("synth_landmarks", "synth", 68, ("inter_ocular",), (36, 45), ("val",), use_box=False),
        TaskSpec(
            "synth_pose", "pose", "synth", ("val",), num_outputs=3, use_box=False, primary="mae", higher_is_better=False
        ),
        TaskSpec(
            "synth_verification",
            "verification",
            "synth_pairs",
            ("val",),
            train_split=None,
            use_box=False,
            primary="accuracy",
        ),
    ]
}


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown eval task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]


# --- raw sample -> tensors ---------------------------------------------------------------------


def encode_sample(
    spec: TaskSpec, sample: Sample, img_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, flip: bool = False
) -> dict[str, torch.Tensor]:
    """Crop, resize, normalise; keep only what the task needs. ``flip`` mirrors the image (only for
    tasks whose target does not change under a flip: classification and attributes)."""
    s = crop_resize(sample, img_size, spec.use_box, spec.box_scale)
    image = s["image"][:, ::-1] if flip else s["image"]
    out = {"image": to_tensor_image(image, mean, std)}
    if spec.kind == "parsing":
        out["seg"] = torch.from_numpy(np.ascontiguousarray(s["seg"])).long()
    elif spec.kind == "landmarks":
        points = torch.from_numpy(s["landmarks"]).float()
        out["landmarks"] = points
        out["nme_norm"] = nme_normalisers(spec, points, s.get("box"))
    elif spec.kind == "pose":
        out["pose"] = torch.from_numpy(np.asarray(s["pose"], np.float32))
    elif spec.kind == "classification":
        out["label"] = torch.tensor(int(s["label"]))
    elif spec.kind == "attributes":
        out["attrs"] = torch.from_numpy(np.asarray(s["attrs"])).long()
    elif spec.kind == "verification":
        out["image_b"] = to_tensor_image(s["image_b"], mean, std)
        out["issame"] = torch.tensor(bool(s["issame"]))
        out["index"] = torch.tensor(int(s["index"]))
    return out


def nme_normalisers(spec: TaskSpec, points: torch.Tensor, box: np.ndarray | None) -> torch.Tensor:
    values = []
    for norm in spec.nme_norms:
        if norm == "inter_ocular":
            values.append(inter_ocular(points[None], spec.eye_ids[0], spec.eye_ids[1])[0])
        elif box is None:
            raise ValueError(f"task {spec.name}: NME norm {norm!r} needs a face box")
        elif norm == "box":
            values.append(box_size(torch.as_tensor(box)[None])[0])
        elif norm == "diagonal":
            values.append(box_diagonal(torch.as_tensor(box)[None])[0])
        else:
            raise ValueError(f"unknown NME normalisation {norm!r}")
    return torch.stack(values).float()


# --- heads, losses and metrics ---------------------------------------------------------------


def build_head(spec: TaskSpec, embed_dim: int, num_layers: int, dim: int = 128) -> nn.Module:
    if spec.kind == "parsing":
        return ParsingHead(embed_dim, num_layers, spec.num_outputs, dim)
    if spec.kind == "landmarks":
        return LandmarkHead(embed_dim, num_layers, spec.num_outputs, dim)
    if spec.kind in ("pose", "classification", "attributes"):
        return PooledHead(embed_dim, spec.num_outputs)
    return nn.Identity()  # verification compares the encoder's pooled features themselves


def predict(spec: TaskSpec, head: nn.Module, features: list[torch.Tensor], pooled: torch.Tensor, size: int):
    """Head output in the task's natural units (logits; landmark pixels; pose degrees; embeddings)."""
    if spec.kind == "parsing":
        return head(features, (size, size))
    if spec.kind == "landmarks":
        return head(features) * size
    if spec.kind == "pose":
        return head(pooled) * POSE_SCALE
    return head(pooled)


def task_loss(spec: TaskSpec, pred: torch.Tensor, batch: dict[str, torch.Tensor], size: int) -> torch.Tensor:
    if spec.kind == "parsing":
        return F.cross_entropy(pred, batch["seg"])
    if spec.kind == "landmarks":
        return F.l1_loss(pred / size, batch["landmarks"] / size)
    if spec.kind == "pose":
        return F.smooth_l1_loss(pred / POSE_SCALE, batch["pose"] / POSE_SCALE, beta=0.05)
    if spec.kind == "classification":
        return F.cross_entropy(pred, batch["label"])
    if spec.kind == "attributes":
        return F.binary_cross_entropy_with_logits(pred, batch["attrs"].float())
    raise ValueError(f"task {spec.name} ({spec.kind}) has no training loss")


class TaskMetric(nn.Module):
    """The task's metrics for one evaluated split: ``update(pred, batch)``, ``compute() -> {name: float}``."""

    def __init__(self, spec: TaskSpec):
        super().__init__()
        self.spec = spec
        if spec.kind == "parsing":
            self.metric: Metric | MetricCollection = ParsingF1(spec.label_names, background=0)
        elif spec.kind == "landmarks":
            self.metric = MetricCollection({n: NME() for n in spec.nme_norms})
        elif spec.kind == "pose":
            self.metric = PoseMAE()
        elif spec.kind == "classification":
            self.metric = MetricCollection(
                {
                    "accuracy": MulticlassAccuracy(spec.num_outputs, average="micro"),
                    "mean_class_accuracy": MulticlassAccuracy(spec.num_outputs, average="macro"),
                }
            )
        elif spec.kind == "attributes":
            self.metric = MultilabelAccuracy(spec.num_outputs, average="macro")
        else:
            self.metric = VerificationAccuracy()

    def update(self, pred: Any, batch: dict[str, torch.Tensor]) -> None:
        kind = self.spec.kind
        if kind == "parsing":
            self.metric.update(pred.argmax(1), batch["seg"])
        elif kind == "landmarks":
            for i, name in enumerate(self.spec.nme_norms):
                self.metric[name].update(pred, batch["landmarks"], batch["nme_norm"][:, i])
        elif kind == "pose":
            self.metric.update(pred, batch["pose"])
        elif kind == "classification":
            self.metric.update(pred, batch["label"])
        elif kind == "attributes":
            self.metric.update(pred, batch["attrs"])
        else:
            emb_a, emb_b = pred
            self.metric.update(emb_a, emb_b, batch["issame"], batch["index"])

    def compute(self) -> dict[str, float]:
        kind = self.spec.kind
        if kind == "parsing":
            return self.metric.summary()
        if kind == "landmarks":
            out = {}
            for name in self.spec.nme_norms:
                for key, value in self.metric[name].compute().items():
                    out[f"{key}_{name}"] = float(value)
            return out
        if kind == "attributes":
            return {"accuracy": float(self.metric.compute())}
        return {k: float(v) for k, v in self.metric.compute().items()}

    def reset(self) -> None:
        self.metric.reset()


def with_overrides(spec: TaskSpec, **changes: Any) -> TaskSpec:
    return dataclasses.replace(spec, **changes)
