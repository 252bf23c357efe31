"""The evaluation DataModule: the task's readers wrapped into tensors, one test loader per split
(and per split with occluders when the occlusion protocol is on)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pacofr.data.worker_loader import WorkerLoader

from .crop import IMAGENET_MEAN, IMAGENET_STD
from .datasets import READERS, Occluded
from .feature_cache import FeatureDataset
from .tasks import TaskSpec, encode_sample, get_task

OCCLUDED_SUFFIX = "+occluded"
FLIP_INVARIANT_KINDS = ("classification", "attributes")  # tasks whose training faces get random flips


class EpochShuffle(Sampler[int]):
    """A random order of ``n`` samples that is a function of ``(seed, epoch)`` only (Lightning calls
    ``set_epoch`` before each epoch): unlike a generator-driven sampler it does not change with how many
    iterators the loader opens (persistent workers, prefetching) or with other draws from any RNG."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % 2**63)
        return iter(torch.randperm(self.n, generator=generator).tolist())


class TaskDataset(Dataset):
    """A reader's raw samples encoded for ``spec`` (random horizontal flips when ``augment`` and the
    task's target is flip-invariant)."""

    def __init__(self, reader: Any, spec: TaskSpec, img_size: int, mean, std, augment: bool = False, seed: int = 0):
        self.reader, self.spec, self.img_size = reader, spec, img_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.augment = augment and spec.kind in FLIP_INVARIANT_KINDS
        self.seed = seed

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        flip = False
        if self.augment:
            flip = bool(torch.randint(2, (1,)).item())
        return encode_sample(self.spec, self.reader[index], self.img_size, self.mean, self.std, flip)


class EvalDataModule(L.LightningDataModule):
    """Data for one benchmark task.

    Args:
        task: a name from ``pacofr.eval.tasks.TASKS`` (must match the model's).
        root: the dataset folder in its public layout (see docs/datasets.md).
        train_root: the training set's folder when it is another dataset (300W-LP for ``aflw2000``).
        img_size: input size of the encoder (square).
        batch_size / num_workers: per-device loader settings.
        occlusion_area: > 0 adds, for every test split, a copy with an occluder covering this
            fraction of the face (the occlusion-robustness protocol); 0 turns it off.
        occlusion_seed: seed of the occluders' placement (same images for every model).
        max_train_samples: use only the first N training samples (quick runs, tests).
        mean / std: input normalisation (the pretraining's).
        augment: random horizontal flips of training faces where the target allows (classification,
            attributes); off makes their inputs deterministic, so a probe can cache their features.

    The training order is a function of the run's seed (``torch.initial_seed()``) and the epoch only
    (:class:`EpochShuffle`), not of other draws from the global RNG or of the worker count: a probe
    trained on cached features sees the same batches as one that encodes images.
    """

    def __init__(
        self,
        task: str,
        root: str,
        train_root: str | None = None,
        img_size: int = 224,
        batch_size: int = 64,
        num_workers: int = 4,
        occlusion_area: float = 0.0,
        occlusion_seed: int = 0,
        max_train_samples: int | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augment: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.spec = get_task(task)
        self.root, self.train_root = root, train_root or root
        self.img_size, self.batch_size, self.num_workers = img_size, batch_size, num_workers
        self.occlusion_area, self.occlusion_seed = occlusion_area, occlusion_seed
        self.max_train_samples = max_train_samples
        self.mean, self.std = tuple(mean), tuple(std)
        self.augment = augment
        self.datasets: dict[str, Dataset] = {}

    @property
    def has_train(self) -> bool:
        return self.spec.train_split is not None

    @property
    def train_is_random(self) -> bool:
        """Whether a training sample's input differs between epochs (random flips)."""
        return self.augment and self.spec.kind in FLIP_INVARIANT_KINDS

    @property
    def test_names(self) -> list[str]:
        names = list(self.spec.test_splits)
        if self.occlusion_area > 0:
            names += [n + OCCLUDED_SUFFIX for n in self.spec.test_splits]
        return names

    def _reader(self, name: str, split: str, root: str) -> Any:
        return READERS[name](root, split, **self.spec.reader_kwargs)

    def _wrap(self, reader: Any, augment: bool = False) -> TaskDataset:
        return TaskDataset(reader, self.spec, self.img_size, self.mean, self.std, augment)

    def setup(self, stage: str | None = None) -> None:
        spec = self.spec
        if stage in (None, "fit") and self.has_train and "train" not in self.datasets:
            reader = self._reader(spec.train_reader or spec.reader, spec.train_split, self.train_root)
            if self.max_train_samples is not None:
                reader = torch.utils.data.Subset(reader, range(min(self.max_train_samples, len(reader))))
            self.datasets["train"] = self._wrap(reader, augment=self.augment)
            if spec.val_split is not None:
                self.datasets["val"] = self._wrap(self._reader(spec.reader, spec.val_split, self.root))
        if stage in (None, "test", "validate") and not any(n in self.datasets for n in self.test_names):
            for split in spec.test_splits:
                reader = self._reader(spec.reader, split, self.root)
                self.datasets[split] = self._wrap(reader)
                if self.occlusion_area > 0:
                    occluded = Occluded(reader, self.occlusion_area, self.occlusion_seed)
                    self.datasets[split + OCCLUDED_SUFFIX] = self._wrap(occluded)

    def check_readable(self, training: bool = True) -> None:
        """Open the reader of every split this job will use (and drop them): a missing, damaged or refused
        file raises here, before a trainer logs or writes anything. ``setup`` opens them again for real."""
        spec = self.spec
        if training and self.has_train:
            self._reader(spec.train_reader or spec.reader, spec.train_split, self.train_root)
            if spec.val_split is not None:
                self._reader(spec.reader, spec.val_split, self.root)
        for split in spec.test_splits:
            self._reader(spec.reader, split, self.root)

    def _loader(self, dataset: Dataset, shuffle: bool = False, drop_last: bool = False) -> DataLoader:
        # cached features are tensors in memory: worker processes would only add copies between processes
        workers = 0 if isinstance(dataset, FeatureDataset) else self.num_workers
        sampler = None
        if shuffle:
            sampler = EpochShuffle(len(dataset), torch.initial_seed())
        return WorkerLoader(  # forks its workers with OpenCV at one thread (pacofr.data.worker_loader)
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def plain_loader(self, dataset: Dataset) -> DataLoader:
        """In order, one pass, no persistent workers (for encoding a split once)."""
        return WorkerLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        train = self.datasets["train"]
        return self._loader(train, shuffle=True, drop_last=len(train) > self.batch_size)

    def val_dataloader(self) -> DataLoader | list:
        # Without a val split the model is scored on the test splits only at the end.
        return self._loader(self.datasets["val"]) if "val" in self.datasets else []

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.datasets[name]) for name in self.test_names]
