"""Raw samples -> one collated batch: decode, joint transform, collate, then the masker over the batch.

The batch follows the schema of :mod:`pacofr.data.batch`, with ``image`` and ``seg`` still uint8 (the data
module converts them on the device). Every random draw is seeded from (seed, epoch, sample key), so a
sample gets the same augmentation and mask whichever worker builds it, and again after a resume. A sample
whose pixels fail to decode is replaced by a copy of another sample of the same batch (counted), so the
batch size and the stream position never change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from pacofr.data.batch import MASK_KEYS, Masker
from pacofr.data.decode import check_labels, decode_arrays, decode_labels
from pacofr.data.device_images import MASK_DRAW_PREFIX, pack_jpegs
from pacofr.data.format import KEY_IMAGE, patch_grid
from pacofr.data.lanes import derive_seed
from pacofr.data.shard_reader import RawSample
from pacofr.data.stream_stats import StreamStats
from pacofr.data.transforms import JointTransform
from pacofr.data.worker_loader import freeze_inherited_heap, one_opencv_thread_in_worker


def masker_labels(masker: Masker, seg: np.ndarray) -> torch.Tensor:
    """uint8 label map(s) as the masker takes them: its ``label_dtype`` (int64 unless it says uint8)."""
    labels = torch.from_numpy(seg)
    return labels if getattr(masker, "label_dtype", torch.int64) == torch.uint8 else labels.to(torch.int64)


class BatchBuilder:
    """Decode + joint transform per sample, collate, then the masker over the batch. Shared by train and val.

    Masks come from ``masker.batch`` (one vectorised call for the batch; the default loops over
    the samples) with each sample's own generator, seeded from its key: the same masks as one call
    per sample, at a fraction of the per-call overhead.

    Images and label maps stay uint8 up to the batch (``image`` uint8 [B,3,S,S], a channels-last
    view of the collated HWC array; ``seg`` uint8 [B,S,S]): a quarter and an eighth of the bytes
    of float32 / int64 to collate, share between processes and copy to the device, where
    ``PretrainDataModule.on_after_batch_transfer`` turns them into the network's float input.

    ``images_on_device``: the device image path (:mod:`pacofr.data.device_images`): the image stays JPEG bytes
    and only its draws (crop box, flip, colour factors) are made here; the label map is built here as on the CPU
    path, from the same draws. The masks too, unless the masker can build them on the device
    (``draws`` + ``batch_from_draws``, :mod:`pacofr.masking.on_device`: the random and structured maskers): then
    each sample's mask generator gives only the numbers the masker would draw, shipped as
    ``mask_draw_<name>`` entries (:data:`~pacofr.data.device_images.MASK_DRAW_PREFIX`), and the device builds
    the masks and region histograms from them and the label maps (:func:`~pacofr.data.device_images.masks_from_draws`).
    """

    def __init__(
        self,
        transform: JointTransform,
        masker: Masker | None,
        seed: int,
        warn: Callable[[str], None],
        images_on_device: bool = False,
    ):
        self.transform, self.masker, self.seed, self.warn = transform, masker, seed, warn
        self.images_on_device = images_on_device
        self.masks_on_device = images_on_device and callable(getattr(masker, "batch_from_draws", None))
        # one DataLoader worker = one core: OpenCV's own pool would oversubscribe (a no-op in a worker forked by
        # WorkerLoader, which must not touch a pool inherited through fork)
        one_opencv_thread_in_worker()
        freeze_inherited_heap()  # a worker's full collections would walk the parent's heap (worker_loader)

    def _one(self, raw: RawSample, epoch: int | str) -> dict[str, Any]:
        if self.images_on_device:
            image, seg = None, decode_labels(raw)
        else:
            image, seg = decode_arrays(raw)
        if self.masker is not None:
            check_labels(seg)  # a bad map fails here, as this sample's error, not the whole batch's masking
        key = raw["__key__"]
        gen = torch.Generator().manual_seed(derive_seed("augment", self.seed, epoch, key))
        if image is None:  # the same draws as apply() makes, shipped with the bytes
            box, flip, colour = self.transform.draw(*seg.shape, gen)
            return {
                "jpeg": raw[KEY_IMAGE],
                "seg": self.transform.apply_labels(seg, box, flip),
                # numpy scalars and rows (collate stacks them into the same tensors): ~10x cheaper than torch.tensor
                "crop_box": np.asarray(box, dtype=np.int64),
                "flip": np.asarray(flip, dtype=np.bool_),
                "jitter": np.asarray(colour, dtype=np.float32),
                "key": key,
            }
        image, seg, _ = self.transform.apply(image, seg, gen)
        return {"image": image, "seg": seg, "key": key}

    def _masks(self, batch: dict[str, Any], epoch: int | str) -> dict[str, torch.Tensor]:
        """The masker's entries (``MASK_KEYS``) for the collated batch, or with masks on the device the draws they
        are built from; sample ``b``'s draws come from its own seeded generator."""
        gens = [torch.Generator().manual_seed(derive_seed("mask", self.seed, epoch, key)) for key in batch["key"]]
        if self.masks_on_device:  # the masker's own draws, the device builds the masks (pacofr.masking.on_device)
            rows, cols = patch_grid(batch["seg"], self.masker.patch_size)  # type: ignore[union-attr]
            draws = [self.masker.draws(gen, rows * cols) for gen in gens]  # type: ignore[union-attr]
            return {MASK_DRAW_PREFIX + name: torch.stack([d[name] for d in draws]) for name in draws[0]}
        labels = masker_labels(self.masker, batch["seg"].numpy())
        batched = getattr(self.masker, "batch", None)
        if callable(batched):
            return batched(labels, gens)
        # a masker that is only callable (not a Masker subclass): one MaskResult per sample, stacked
        results = [self.masker(seg, gen).as_dict() for seg, gen in zip(labels, gens)]  # type: ignore[misc]
        return {name: torch.stack([r[name] for r in results]) for name in MASK_KEYS}

    def __call__(
        self,
        raws: Sequence[RawSample | None],
        epoch: int | str,
        stats: StreamStats,
        valid: Sequence[bool] | None = None,
    ) -> dict[str, Any]:
        """Collate ``raws``; a None or undecodable entry becomes a copy of a good one in the batch."""
        items: list[dict[str, Any] | None] = []
        for raw in raws:
            if raw is None:
                items.append(None)
                continue
            try:
                items.append(self._one(raw, epoch))
            except Exception as err:  # a corrupt JPEG/PNG body can raise many exception types
                stats.decode_errors += 1
                self.warn(f"cannot decode sample {raw.get('__key__')!r} from {raw.get('__url__')}: {err!r}")
                items.append(None)
        good = [i for i, item in enumerate(items) if item is not None]
        if not good:
            raise RuntimeError(f"every sample of a batch failed to decode (keys {[r and r['__key__'] for r in raws]})")
        flags = list(valid) if valid is not None else [True] * len(items)
        for i, item in enumerate(items):
            if item is None:
                items[i] = items[good[i % len(good)]]
                flags[i] = False
        batch = collate(items)  # type: ignore[arg-type]
        if self.masker is not None:
            batch.update(self._masks(batch, epoch))
        if valid is not None:
            batch["valid"] = torch.tensor(flags, dtype=torch.bool)
        return batch


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack per-sample dicts: ``key`` -> list, numpy arrays via ``np.stack``, tensors via ``torch.stack``;
    ``image`` (HWC arrays) comes out as a (B, 3, S, S) channels-last view, without a copy."""
    batch: dict[str, Any] = {"key": [item["key"] for item in items]}
    for name in items[0]:
        if name == "key":
            continue
        if name == "jpeg":  # the device image path: the batch's JPEG bytes in one tensor (shared, not pickled)
            batch["jpeg"], batch["jpeg_offsets"] = pack_jpegs([item["jpeg"] for item in items])
            continue
        values = [item[name] for item in items]
        if isinstance(values[0], np.ndarray):
            batch[name] = torch.from_numpy(np.stack(values))
        else:
            batch[name] = torch.stack(values)
    if "image" in batch:
        batch["image"] = batch["image"].permute(0, 3, 1, 2)  # (B, S, S, 3) -> (B, 3, S, S)
    return batch
