"""``PretrainDataModule``: the shard streams wired into Lightning, with exact resume.

Resume: Lightning 2.6 ``trainer.fit(ckpt_path=...)`` restores, in this order (see
``Trainer._run``): the datamodule's ``load_state_dict`` (``_restore_modules_and_callbacks``),
then the loops (``restore_training_state``: ``global_step`` comes back here), then it runs the
fit loop, whose ``setup_data()`` calls ``train_dataloader()``. So ``train_dataloader()`` reads
the restored ``trainer.global_step`` and starts the stream at batch
``global_step * accumulate_grad_batches``. Workers prefetch, so the module never counts
batches itself; the checkpointed ``batches_consumed`` is a cross-check and the fallback when no
trainer is attached (``set_start_batch`` sets it explicitly).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from pacofr.data.batch import Masker
from pacofr.data.device_images import has_mask_draws, images_from_plan, masks_from_draws
from pacofr.data.format import read_manifest
from pacofr.data.stream_stats import StreamStats
from pacofr.data.streams import STATS_KEY, TrainShardStream, ValShardStream
from pacofr.data.transforms import AugmentConfig, JointTransform, normalize_images
from pacofr.data.worker_loader import WorkerLoader

log = logging.getLogger(__name__)


class PretrainDataModule(L.LightningDataModule):
    """Train/val batches ``{"image": f32 [B,3,S,S], "seg": i64 [B,S,S], "key": list[str]}``, as the
    LightningModule sees them.

    The loaders yield ``image`` uint8 [B,3,S,S] (0..255 RGB) and ``seg`` uint8 [B,S,S]: the workers
    stay in uint8 and collate a fraction of the bytes. :meth:`on_after_batch_transfer` (run by
    Lightning on the device, after the copy) turns them into normalised float32 images
    (``augment.mean/std``, :func:`~pacofr.data.transforms.normalize_images`) and int64 label maps.
    Code that iterates a loader itself, outside a Trainer, calls :meth:`to_model_input` on each batch.

    With a ``masker`` (built in the workers after augmentation, one ``masker.batch`` call per batch,
    each sample drawn from its own seeded generator) batches also hold
    ``"mask": bool [B,N]``, ``"covered": i64 [B]``, ``"region_hist": f32 [B,N,9]``. Val batches
    add ``"valid": bool [B]`` (False on padding that evens out the ranks). The train stream is
    infinite: train by ``max_steps``.

    Args:
        root: dataset folder holding ``_info.json`` and the shards.
        batch_size: per-rank batch size (train and, unless ``val_batch_size``, val).
        num_workers: DataLoader workers; keep it fixed across a resume (it defines the lanes).
        image_size: output side S.
        seed: seeds shard order, shuffle buffers, augmentation and masks.
        masker: a :class:`~pacofr.data.batch.Masker` (any ``class_path`` subclass), or None.
        augment: training augmentation settings (eval uses its normalisation and crop fraction).
        train_split / val_split: split names in the manifest; ``val_split=None`` disables validation.
        shuffle_buffer: samples held by each worker's shuffle buffer (a resumed worker reads about as many, and
            at most 16 times as many, to refill it: :mod:`pacofr.data.streams`).
        prefetch_factor: batches prefetched per worker.
        images_on_device: the device image path (:mod:`pacofr.data.device_images`): workers ship JPEG bytes and
            the augmentation's draws, and the training device decodes (nvJPEG on CUDA) and augments the batch;
            label maps are still built in the workers, from the same draws; masks too, unless the masker builds
            them on the device from its per-sample draws (random and structured maskers: the same masks,
            :mod:`pacofr.masking.on_device`). Off: the CPU path.
    """

    def __init__(
        self,
        root: str,
        batch_size: int = 64,
        num_workers: int = 8,
        image_size: int = 224,
        seed: int = 0,
        masker: Masker | None = None,
        augment: AugmentConfig | None = None,
        train_split: str = "train",
        val_split: str | None = "val",
        val_batch_size: int | None = None,
        shuffle_buffer: int = 1000,
        prefetch_factor: int = 2,
        images_on_device: bool = False,
    ):
        super().__init__()
        self.root = root
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.seed = seed
        self.masker = masker
        self.augment = augment or AugmentConfig()
        self.train_split, self.val_split = train_split, val_split
        self.val_batch_size = val_batch_size or batch_size
        self.shuffle_buffer = shuffle_buffer
        self.prefetch_factor = prefetch_factor
        self.images_on_device = images_on_device
        self.device_decode_errors = 0  # images the device could not decode (replaced within their batch)
        self._start_batch = 0
        self._loaded_state: dict[str, Any] | None = None
        self.train_stream: TrainShardStream | None = None
        self.worker_stats: dict[tuple[str, int, int], StreamStats] = {}

    # --- position ---------------------------------------------------------------------------
    def set_start_batch(self, batch_index: int) -> None:
        """Start the next train dataloader at this rank-local batch index (``global_step * accumulate``)."""
        if batch_index < 0:
            raise ValueError(f"start batch must be >= 0, got {batch_index}")
        self._start_batch = batch_index

    def _batches_consumed(self) -> int:
        trainer = self.trainer
        if trainer is not None:
            return trainer.global_step * trainer.accumulate_grad_batches
        return self._start_batch

    def state_dict(self) -> dict[str, Any]:
        rank, world = self._rank_world()
        return {
            "batches_consumed": self._batches_consumed(),
            "seed": self.seed,
            "world_size": world,
            "num_workers": self.num_workers,
            "batch_size": self.batch_size,
            "shuffle_buffer": self.shuffle_buffer,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded_state = dict(state_dict)
        self._start_batch = int(state_dict["batches_consumed"])

    def _check_resume_config(self, world: int) -> None:
        saved = self._loaded_state
        if not saved:
            return
        now = {
            "seed": self.seed,
            "world_size": world,
            "num_workers": self.num_workers,
            "batch_size": self.batch_size,
            "shuffle_buffer": self.shuffle_buffer,
        }
        changed = {k: (saved.get(k), v) for k, v in now.items() if k in saved and saved[k] != v}
        if changed:
            log.warning(
                "data stream config changed since the checkpoint (%s): the resumed run will not see exactly the "
                "samples the original run would have",
                ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items()),
            )

    def _rank_world(self) -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return 0, 1

    # --- loaders ------------------------------------------------------------------------------
    def _loader(self, dataset: Any, workers: int) -> DataLoader:
        return WorkerLoader(  # forks its workers with OpenCV at one thread (a hung worker hangs the rank)
            dataset,
            batch_size=None,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            prefetch_factor=self.prefetch_factor if workers > 0 else None,
            persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        start = self._batches_consumed()
        if self.trainer is not None and self._loaded_state is not None:
            saved = int(self._loaded_state["batches_consumed"])
            if saved != start:
                log.warning("checkpoint says %d batches consumed, trainer says %d: using the trainer", saved, start)
        self._check_resume_config(world)
        self.train_stream = TrainShardStream(
            self.root,
            self.batch_size,
            JointTransform(self.image_size, train=True, config=self.augment),
            split=self.train_split,
            rank=rank,
            world_size=world,
            num_workers=self.num_workers,
            seed=self.seed,
            masker=self.masker,
            shuffle_buffer=self.shuffle_buffer,
            start_batch=start,
            images_on_device=self.images_on_device,
        )
        log.info(
            "train stream: rank %d/%d, start batch %d (epoch %d), %d batches per epoch",
            rank,
            world,
            start,
            self.train_stream.epoch_of(start),
            self.train_stream.batches_per_epoch,
        )
        return self._loader(self.train_stream, self.num_workers)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_split is None:
            return []
        rank, world = self._rank_world()
        stream = ValShardStream(
            self.root,
            self.val_batch_size,
            JointTransform(self.image_size, train=False, config=self.augment),
            split=self.val_split,
            rank=rank,
            world_size=world,
            seed=self.seed,
            masker=self.masker,
            images_on_device=self.images_on_device,
        )
        return self._loader(stream, min(self.num_workers, len(stream)))

    # --- stats ----------------------------------------------------------------------------------
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Strip the worker's data-problem counters off the batch and keep them here."""
        if isinstance(batch, dict) and STATS_KEY in batch:
            record = batch.pop(STATS_KEY)
            stage = "train" if self.trainer is None or self.trainer.training else "val"
            counts = {k: v for k, v in record.items() if k not in ("rank", "lane")}
            self.worker_stats[(stage, record["rank"], record["lane"])] = StreamStats(**counts)
        if isinstance(batch, dict) and ("jpeg" in batch or has_mask_draws(batch)):  # the device path
            device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
            self._on_device(batch, device)
        return batch

    def _on_device(self, batch: dict[str, Any], device: torch.device) -> None:
        """The device path's device work: masks from the workers' draws, then the images (whose replacement of an
        undecodable one copies its donor's masks)."""
        if has_mask_draws(batch):
            masks_from_draws(batch, self.masker, device)
        if "jpeg" in batch:
            self._images_from_plan(batch, device)

    def _images_from_plan(self, batch: dict[str, Any], device: torch.device) -> None:
        failures = images_from_plan(batch, self.image_size, device, self.augment.mean, self.augment.std)
        if failures:
            self.device_decode_errors += failures
            log.warning("%d image(s) of a batch failed to decode on %s: replaced within the batch", failures, device)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """On the device: uint8 images -> normalised float32, uint8 label maps -> int64."""
        return self.to_model_input(batch)

    def to_model_input(self, batch: Any) -> Any:
        """The loader's uint8 ``image``/``seg`` as the model takes them (float32 normalised, int64);
        already converted entries are left alone, so calling it twice is harmless."""
        if not isinstance(batch, dict):
            return batch
        if "jpeg" in batch or has_mask_draws(batch):  # the device path, outside a Trainer: where its tensors are
            self._on_device(batch, batch["seg"].device)
        image = batch.get("image")
        if isinstance(image, torch.Tensor) and image.dtype == torch.uint8:
            batch["image"] = normalize_images(image, self.augment.mean, self.augment.std)
        seg = batch.get("seg")
        if isinstance(seg, torch.Tensor) and seg.dtype == torch.uint8:
            batch["seg"] = seg.to(torch.int64)
        return batch

    @property
    def data_stats(self) -> StreamStats:
        """Problems met so far by this rank's workers (latest cumulative count of each)."""
        total = StreamStats(decode_errors=self.device_decode_errors)
        for stats in self.worker_stats.values():
            total = total + stats
        return total

    @property
    def train_samples(self) -> int:
        """Samples in one epoch of the training split (all ranks together), from the manifest."""
        split = read_manifest(self.root, check_shards=False).splits.get(self.train_split)
        if split is None:
            raise ValueError(f"{self.root}: the manifest has no split {self.train_split!r}")
        return int(split.num_samples)

    def describe_data(self) -> dict[str, Any]:
        """What ties a run to its data (written into the run folder's ``run_info.json``)."""
        manifest = read_manifest(self.root, check_shards=False)
        return {
            "root": str(self.root),
            "manifest_digest": manifest.digest(),
            "format": manifest.format,
            "image_size": manifest.image_size,
            "splits": {name: info.num_samples for name, info in manifest.splits.items()},
            "source": manifest.source,
            "prep": manifest.prep.get("backend", ""),
        }
