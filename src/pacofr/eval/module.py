"""The evaluation LightningModule: a pretrained encoder plus a task head, probed (encoder frozen)
or fine-tuned (layer-wise lr decay), scored on the task's test splits; results go to
``results/<task>.json`` next to the checkpoint and to the trainer's logger (TensorBoard).

``run_eval(trainer, model, datamodule)`` is the whole job: fit when the task has training data,
then test. A probe whose training inputs are deterministic encodes its train (and val) split once
and trains the head on the cached features (``cache_features``; see :mod:`pacofr.eval.feature_cache`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from timm.optim import param_groups_layer_decay
from torch import nn

from pacofr.checkpointing.resolve import checkpoint_global_step
from pacofr.hparams_session import add_session_metrics, pretraining_log_dir
from pacofr.optim import param_groups, warmup_cosine

from .backbone import file_sha256, load_backbone
from .data import OCCLUDED_SUFFIX, EvalDataModule
from .feature_cache import FEATURES_KEY, GB, INPUT_SIZE_KEY, POOLED_KEY, FeatureDataset, cache_split, is_cached_batch
from .tasks import TaskMetric, build_head, get_task, predict, task_loss

log = logging.getLogger(__name__)


def default_feature_layers(depth: int) -> list[int]:
    """Blocks at 1/3, 1/2, 2/3 and the end of the encoder (3, 5, 7, 11 for a 12-block ViT)."""
    return sorted({max(0, round(depth * f) - 1) for f in (1 / 3, 1 / 2, 2 / 3, 1.0)})


class EvalModule(L.LightningModule):
    """Encoder + head for one benchmark task.

    Args:
        task: a name from ``pacofr.eval.tasks.TASKS`` (the DataModule's ``task`` must match).
        encoder_ckpt: pretraining checkpoint (``.ckpt``) or exported ``encoder.safetensors``; None
            for a randomly initialised encoder (the baseline floor).
        encoder_name / patch_size: timm architecture when ``encoder_ckpt`` is None.
        img_size: evaluation input size (position embeddings are resampled if it differs).
        mode: ``probe`` (encoder frozen, in eval mode) or ``finetune`` (all trained, layer decay).
        feature_layers: encoder blocks feeding dense heads (default: 1/3, 1/2, 2/3, last).
        head_dim: channels of the dense heads' neck.
        lr: peak learning rate of the head (encoder layers get ``lr * layer_decay ** depth_from_top``).
        weight_decay: AdamW weight decay (none on norms, biases, position embeddings, tokens).
        layer_decay: per-block lr decay when fine-tuning.
        warmup_fraction: share of the training steps with linear warmup before the cosine decay.
        results_dir: where ``<task>.json`` goes (default: ``results/`` next to the checkpoint).
        trust_checkpoint: allow a checkpoint that ``torch.load(weights_only=True)`` refuses.
        cache_features: probe only: encode the train/val splits once and train the head on the stored
            features (same results, epochs 2.. skip decoding and the encoder). ``auto``: when valid
            (frozen encoder, no random training augmentation), worth it (more than one epoch, not
            ``fast_dev_run``) and the estimate fits ``cache_max_gb``; ``true``: always (an error
            where invalid); ``false``: never.
        cache_max_gb: host-memory limit of the ``auto`` cache (train + val features and targets).
    """

    def __init__(
        self,
        task: str,
        encoder_ckpt: str | None = None,
        encoder_name: str = "vit_base_patch16_224",
        patch_size: int = 16,
        img_size: int = 224,
        mode: Literal["probe", "finetune"] = "probe",
        feature_layers: list[int] | None = None,
        head_dim: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        layer_decay: float = 0.75,
        warmup_fraction: float = 0.05,
        results_dir: str | None = None,
        trust_checkpoint: bool = False,
        cache_features: bool | Literal["auto"] = "auto",
        cache_max_gb: float = 4.0,
    ):
        super().__init__()
        if mode not in ("probe", "finetune"):
            raise ValueError(f"mode must be 'probe' or 'finetune', got {mode!r}")
        if cache_features not in (True, False, "auto"):
            raise ValueError(f"cache_features must be auto, true or false, got {cache_features!r}")
        self.save_hyperparameters()
        self.spec = get_task(task)
        self.backbone = load_backbone(encoder_ckpt, img_size, encoder_name, patch_size, trust_checkpoint)
        depth = len(self.backbone.blocks)
        self.feature_layers = list(feature_layers) if feature_layers else default_feature_layers(depth)
        if max(self.feature_layers) >= depth or min(self.feature_layers) < 0:
            raise ValueError(f"feature_layers {self.feature_layers} outside the encoder's {depth} blocks")
        self.head = build_head(self.spec, self.backbone.embed_dim, len(self.feature_layers), head_dim)
        self.frozen = mode == "probe"
        if self.frozen:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
        self.val_metric = TaskMetric(self.spec)
        self.test_metrics = nn.ModuleDict()
        self.test_names: list[str] = []
        self.results: dict[str, Any] = {}

    # --- forward ---------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:  # a probe reads the encoder as pretrained: no dropout / drop-path
            self.backbone.eval()
        return self

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Multi-layer NCHW features (dense tasks) or the pooled final feature (global tasks)."""
        ctx = torch.no_grad() if self.frozen else contextlib.nullcontext()
        with ctx:
            if self.spec.dense:
                feats = self.backbone.forward_intermediates(
                    x, indices=self.feature_layers, intermediates_only=True, stop_early=True
                )
                return list(feats), None
            pooled = self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)
            return [], pooled

    def forward(self, batch: dict[str, Any]) -> Any:
        if self.spec.kind == "verification":
            return self.embed(batch["image"]), self.embed(batch["image_b"])
        if is_cached_batch(batch):  # the frozen encoder's output, stored by prepare_feature_cache
            feats, pooled = batch.get(FEATURES_KEY, []), batch.get(POOLED_KEY)
        else:
            feats, pooled = self.encode(batch["image"])
        return predict(self.spec, self.head, feats, pooled, input_size(batch))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Verification embedding: pooled features of the face plus of its mirror image (insightface)."""
        return self.encode(x)[1] + self.encode(x.flip(-1))[1]

    # --- steps -----------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        pred = self(batch)
        loss = task_loss(self.spec, pred, batch, input_size(batch))
        # every eval tag under eval/: beside a pretraining run in TensorBoard its val/ and train/ stay its own
        self.log("eval/train/loss", loss, prog_bar=True, batch_size=len(pred))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.val_metric.update(self(batch), batch)

    def on_validation_epoch_end(self) -> None:
        scores = self.val_metric.compute()
        self.val_metric.reset()
        self.log_dict({f"eval/val/{k}": v for k, v in scores.items()})

    def setup(self, stage: str) -> None:
        if stage != "test":
            return
        dm = getattr(self.trainer, "datamodule", None)
        if isinstance(dm, EvalDataModule) and dm.spec.name != self.spec.name:
            raise ValueError(f"model task {self.spec.name!r} and data task {dm.spec.name!r} differ")
        self.test_names = list(dm.test_names) if isinstance(dm, EvalDataModule) else list(self.spec.test_splits)
        self.test_metrics = nn.ModuleDict({_key(n): TaskMetric(self.spec) for n in self.test_names})

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.test_metrics[_key(self.test_names[dataloader_idx])].update(self(batch), batch)

    def on_test_epoch_end(self) -> None:
        scores = {}
        for name in self.test_names:
            metric = self.test_metrics[_key(name)]
            scores[name] = metric.compute()
            metric.reset()
        drops = occlusion_drops(scores, self.spec.primary, self.spec.higher_is_better)
        flat = {f"eval/test/{split}/{k}": v for split, vals in scores.items() for k, v in vals.items()}
        flat.update({f"eval/test/{split}/occlusion_drop": v for split, v in drops.items()})
        self.log_dict(flat, add_dataloader_idx=False)
        self.results = self._results(scores, drops)
        if self.trainer.is_global_zero:
            write_json_atomic(self.results_path(), self.results)
            self.record_in_pretraining_run(scores, drops)

    def record_in_pretraining_run(self, scores: dict[str, dict[str, Any]], drops: dict[str, float]) -> None:
        """The primary score of each test split (and its occlusion drop) as metrics of the pretraining run's
        HPARAMS row, when the encoder is a checkpoint of a pacofr run (``pacofr.hparams_session``)."""
        ckpt = self.hparams.encoder_ckpt
        log_dir = pretraining_log_dir(ckpt)
        if log_dir is None:
            return
        task, primary = self.spec.name, self.spec.primary
        metrics = {f"eval/{task}/{split}/{primary}": float(vals[primary]) for split, vals in scores.items()}
        metrics.update({f"eval/{task}/{split}/occlusion_drop": float(v) for split, v in drops.items()})
        add_session_metrics(log_dir, metrics, checkpoint_global_step(ckpt))

    # --- feature cache ---------------------------------------------------------------------
    def cache_refusal(self, trainer: L.Trainer, datamodule: EvalDataModule) -> str | None:
        """Why the probe's features are not cached for this run (None: they are cached)."""
        setting = self.hparams.cache_features
        if setting is False:
            return "cache_features is false"
        invalid = None
        if not self.frozen:
            invalid = "the encoder is fine-tuned (its features change every step)"
        elif datamodule.train_is_random:
            invalid = f"{self.spec.name} training uses random flips (set data.augment false to cache)"
        if invalid and setting is True:
            raise ValueError(f"cache_features is true, but {invalid}")
        if invalid:
            return invalid
        if setting == "auto" and (trainer.fast_dev_run or trainer.max_epochs == 1):
            return "a single pass over the data gains nothing from a cache"
        return None

    def prepare_feature_cache(self, trainer: L.Trainer, datamodule: EvalDataModule) -> list[str]:
        """Encode the train and val splits once on the trainer's device and swap them for
        :class:`FeatureDataset` objects in ``datamodule``; returns the splits cached (see ``cache_features``)."""
        if not datamodule.has_train:
            return []
        refusal = self.cache_refusal(trainer, datamodule)
        if refusal:
            log.info("%s: features not cached: %s", self.spec.name, refusal)
            return []
        datamodule.setup("fit")
        device = trainer.strategy.root_device
        budget = None if self.hparams.cache_features is True else self.hparams.cache_max_gb * GB
        home = next(self.backbone.parameters()).device
        self.backbone.to(device)
        cached = []
        try:
            with trainer.precision_plugin.forward_context():  # the dtype the training step would see
                for split in ("train", "val"):
                    dataset = datamodule.datasets.get(split)
                    if dataset is None or isinstance(dataset, FeatureDataset):
                        continue
                    features = cache_split(self.encode, datamodule.plain_loader(dataset), device, budget, split)
                    if features is None:
                        break
                    datamodule.datasets[split] = features
                    cached.append(split)
                    if budget is not None:
                        budget -= features.nbytes
        finally:
            self.backbone.to(home)
        return cached

    # --- results ---------------------------------------------------------------------------
    def results_path(self) -> Path:
        hp = self.hparams
        if hp.results_dir:
            folder = Path(hp.results_dir)
        elif hp.encoder_ckpt:
            folder = Path(hp.encoder_ckpt).resolve().parent / "results"
        else:
            folder = Path(self.trainer.default_root_dir) / "results"
        return folder / f"{self.spec.name}.json"

    def _results(self, scores: dict[str, dict[str, float]], drops: dict[str, float]) -> dict[str, Any]:
        dm = getattr(self.trainer, "datamodule", None)
        ckpt = self.hparams.encoder_ckpt
        return {
            "task": self.spec.name,
            "mode": self.hparams.mode,
            "primary_metric": self.spec.primary,
            "metrics": scores,
            "occlusion_drop": drops,
            "splits": self.test_names,
            "epochs": int(self.trainer.current_epoch),
            "global_step": int(self.trainer.global_step),
            "checkpoint": str(ckpt) if ckpt else None,
            "checkpoint_sha256": file_sha256(ckpt) if ckpt else None,
            "config": {
                "model": _plain(dict(self.hparams)),
                "data": _plain(dict(dm.hparams)) if dm is not None else {},
                "feature_layers": self.feature_layers,
            },
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }

    # --- optimisation ----------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        groups = param_groups(self.head.named_parameters(), hp.weight_decay)
        for g in groups:
            g["lr"] = hp.lr
        if not self.frozen:
            backbone_groups = param_groups_layer_decay(
                self.backbone,
                weight_decay=hp.weight_decay,
                no_weight_decay_list=list(self.backbone.no_weight_decay()),
                layer_decay=hp.layer_decay,
            )
            for g in backbone_groups:
                g["lr"] = hp.lr * g.get("lr_scale", 1.0)
            groups += backbone_groups
        groups = [g for g in groups if g["params"]]
        if not groups:
            raise ValueError(f"task {self.spec.name} in {hp.mode} mode has nothing to train")
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=(0.9, 0.999))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(hp.warmup_fraction * total)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def occlusion_drops(scores: dict[str, dict[str, float]], primary: str, higher_is_better: bool) -> dict[str, float]:
    """Per split with an occluded twin: how much the primary metric got worse (positive = worse)."""
    drops = {}
    for name, values in scores.items():
        twin = scores.get(name + OCCLUDED_SUFFIX)
        if twin is None or primary not in values:
            continue
        diff = values[primary] - twin[primary]
        drops[name] = diff if higher_is_better else -diff
    return drops


def run_eval(trainer: L.Trainer, model: EvalModule, datamodule: EvalDataModule) -> dict[str, Any]:
    """Train the head (if the task has training data and ``max_epochs`` allows), then test."""
    if model.spec.name != datamodule.spec.name:
        raise ValueError(f"model task {model.spec.name!r} and data task {datamodule.spec.name!r} differ")
    training = datamodule.has_train and trainer.max_epochs != 0
    # open every split first: a damaged or refused file stops here, before any TensorBoard run or result exists
    datamodule.check_readable(training)
    if training:
        model.prepare_feature_cache(trainer, datamodule)
        trainer.fit(model, datamodule=datamodule)
    trainer.test(model, datamodule=datamodule)
    return model.results


def input_size(batch: dict[str, Any]) -> int:
    """Side of the (square) input image: from the image, or as stored beside cached features."""
    if "image" in batch:
        return batch["image"].shape[-1]
    return int(batch[INPUT_SIZE_KEY][0])


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _key(name: str) -> str:
    return name.replace(".", "_")  # ModuleDict keys may not hold dots


def _plain(obj: Any) -> Any:
    """JSON-safe copy of a hyper-parameter tree."""
    if isinstance(obj, dict):  # "_instantiator" and the like are LightningCLI bookkeeping
        return {str(k): _plain(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)
