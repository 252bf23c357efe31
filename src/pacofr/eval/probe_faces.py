"""The faces a probe reads: their labels at the probe's image size and, once encoded, their patch tokens in
every view of the encoder (:mod:`pacofr.eval.probe_views`); the probe's training / test sets."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pacofr.data.format import LABEL_NAMES
from pacofr.eval.crop import IMAGENET_MEAN, IMAGENET_STD, crop_resize
from pacofr.eval.module import default_feature_layers

from .probe_parsing import to_groups
from .probe_views import SubsetReading, ViewReader

NUM_CLASSES = len(LABEL_NAMES)
FULL_ONLY = SubsetReading()  # the default reading when only the full view is asked for


@dataclass
class FaceSet:
    """Labels of a list of faces at the probe's image size, and (once encoded) their patch tokens."""

    seg: torch.Tensor  # (N, S, S) uint8 label ids
    landmarks: torch.Tensor  # (N, 68, 2) pixels of the S x S input
    pose: torch.Tensor  # (N, 3) degrees
    tokens: torch.Tensor | None = None  # (N, P, C) float32: the view being scored
    identity: torch.Tensor | None = None  # (N,) int identity ids (None: the reader has none)
    views: dict[str, torch.Tensor] = field(default_factory=dict)  # every view encoded: name -> (N, P, C)
    # label shares per grid, computed once: every view, head and condition reads the same faces' labels
    shares_cache: dict[int, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    @property
    def size(self) -> int:
        return int(self.seg.shape[-1])

    def view(self, name: str) -> FaceSet:
        """The same faces with ``tokens`` read in view ``name``."""
        return dataclasses.replace(self, tokens=self.views[name])

    def head(self, n: int) -> FaceSet:
        """The first ``n`` faces (the training faces are a random draw: any ``n`` of them are)."""

        def cut(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x[:n]

        views = {name: tokens[:n] for name, tokens in self.views.items()}
        cache = {grid: shares[:n] for grid, shares in self.shares_cache.items()}
        return FaceSet(
            self.seg[:n], self.landmarks[:n], self.pose[:n], cut(self.tokens), cut(self.identity), views, cache
        )

    def region_shares(self, grid: int) -> torch.Tensor:
        """(N, classes, grid, grid): the share of each class's pixels in every cell of a grid x grid split."""
        if grid not in self.shares_cache:
            self.shares_cache[grid] = label_shares(self.seg, grid)
        return self.shares_cache[grid]

    def group_shares(self, grid: int) -> torch.Tensor:
        """(N, grid * grid, groups): region-group shares of every cell, row-major."""
        return to_groups(self.region_shares(grid).flatten(2).transpose(1, 2))


def label_shares(seg: torch.Tensor, grid: int, chunk: int = 256) -> torch.Tensor:
    """(N, classes, grid, grid) class shares of the cells of a grid x grid split of (N, S, S) label maps: a
    count per (face, cell, class) when the cells tile the image, else adaptive average pooling of one-hots."""
    n, size = seg.shape[0], seg.shape[-1]
    if size % grid:
        out = []
        for start in range(0, n, chunk):
            onehot = F.one_hot(seg[start : start + chunk].long(), NUM_CLASSES).permute(0, 3, 1, 2).float()
            out.append(F.adaptive_avg_pool2d(onehot, grid))
        return torch.cat(out)
    side = size // grid
    rows = torch.arange(size) // side
    cell = (rows[:, None] * grid + rows[None, :]).flatten()  # the cell of every pixel, row-major
    out = []
    for start in range(0, n, chunk):
        labels = seg[start : start + chunk].reshape(-1, size * size).long()
        faces = torch.arange(labels.shape[0])[:, None]
        codes = (faces * grid * grid + cell) * NUM_CLASSES + labels
        counts = torch.bincount(codes.flatten(), minlength=labels.shape[0] * grid * grid * NUM_CLASSES)
        out.append(counts.view(-1, grid, grid, NUM_CLASSES).permute(0, 3, 1, 2).float() / (side * side))
    return torch.cat(out)


def to_batch(images: list[np.ndarray], mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, 3, S, S) normalised floats of B (S, S, 3) uint8 images: ``crop.to_tensor_image``'s arithmetic on the
    whole batch at once (per image, its small tensor ops cost more than the encoder on 2 busy cores)."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _samples(reader: Any, indices: list[int], size: int) -> Iterator[dict[str, Any]]:
    for i in indices:
        yield crop_resize(reader[int(i)], size, use_box=False)


def _identity_ids(values: list[Any]) -> torch.Tensor | None:
    """Identity labels (any hashable) -> ints in order of first appearance; None if any face has none."""
    if not values or any(v is None for v in values):
        return None
    ids: dict[Any, int] = {}
    return torch.tensor([ids.setdefault(v, len(ids)) for v in values])


@torch.no_grad()
def encode_faces(
    encoder: torch.nn.Module | None,
    reader: Any,
    indices: list[int],
    size: int,
    batch_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    views: Sequence[str] = ("full",),
    reading: SubsetReading = FULL_ONLY,
) -> FaceSet:
    """Read ``indices`` of ``reader`` at ``size`` px; with an ``encoder``, keep their patch tokens in every
    one of ``views`` (``tokens``: the first)."""
    seg, marks, pose, identity, batch = [], [], [], [], []
    encoded: dict[str, list[torch.Tensor]] = {v: [] for v in views}
    read = None if encoder is None else ViewReader(encoder, default_feature_layers(len(encoder.blocks)), views, reading)

    def flush() -> None:
        if read is not None and batch:
            for name, tokens in read(to_batch(batch, mean, std)).items():
                encoded[name].append(tokens)
        batch.clear()

    for sample in _samples(reader, indices, size):
        seg.append(torch.from_numpy(np.ascontiguousarray(sample["seg"])))
        marks.append(torch.from_numpy(sample["landmarks"]))
        pose.append(torch.as_tensor(sample["pose"], dtype=torch.float32))
        identity.append(sample.get("identity"))
        if read is not None:
            batch.append(sample["image"])
            if len(batch) == batch_size:
                flush()
    flush()
    by_view = {name: torch.cat(parts) for name, parts in encoded.items() if parts}
    return FaceSet(
        seg=torch.stack(seg),
        landmarks=torch.stack(marks).float(),
        pose=torch.stack(pose),
        tokens=by_view[views[0]] if by_view else None,
        identity=_identity_ids(identity),
        views=by_view,
    )


@dataclass
class ProbeData:
    """The faces of one probe: training faces (drawn by the seed), the test split clean and occluded,
    and the verification pairs over the test split."""

    train: FaceSet
    test: FaceSet
    test_occluded: FaceSet
    pairs: list[tuple[int, int, bool]]
    train_indices: list[int]

    def view(self, name: str) -> ProbeData:
        return dataclasses.replace(
            self, train=self.train.view(name), test=self.test.view(name), test_occluded=self.test_occluded.view(name)
        )


def draw_train_indices(num_train: int, wanted: int, seed: int) -> list[int]:
    wanted = min(wanted, num_train)
    rng = np.random.default_rng([seed, 7])
    return sorted(rng.choice(num_train, size=wanted, replace=False).tolist())
