"""The device image path (``PretrainDataModule(images_on_device=True)``): JPEG decode and image augmentation on
the training device, with every random draw made in the data workers.

Why: on the CPU path a worker spends most of an image's time decoding the JPEG and resizing, flipping and
colour-jittering it (``bench/data.py``, ``docs/scaling.md``). Here a worker does only what must stay there:

- it reads and checks the sample, decodes the **label map** (the masker needs it) and transforms it with the
  crop box and flip drawn from the sample's generator (:meth:`JointTransform.draw`, the very draws of the CPU
  path), computes the masks from it, and
- ships the image as its **JPEG bytes** plus those draws (:data:`PLAN_KEYS`).

On the device, :func:`decode_jpegs` decodes the batch (nvJPEG, batched, when the device is CUDA; libjpeg-turbo on
the CPU, the same code the tests run) and :func:`augment_on_device` applies crop + resize, flip, colour jitter and
the mean/std normalisation to the whole batch. Masks and label maps stay aligned with the pixels because the
device applies the worker's box and flip. The pixels match the CPU path's to within a few grey levels
(bilinear weights in float rather than OpenCV's fixed point; ``tests/data/test_device_images.py``).

Nothing on this path waits for the training stream's queued work (torchvision's decode does wait, on the host,
for its own GPU work). The decode runs under a side stream that the caller's stream then waits on
(:func:`decode_on_side_stream`): torchvision's CUDA decoder writes its outputs from a private stream that does not
wait for the caller's, into memory allocated while the caller's stream was current, which the caching allocator
may hand over while kernels queued there still read it. Every small per-sample value the device needs (crop rois,
the order that undoes the per-size grouping, flips, colour factors) is laid out on the host in one buffer
(:func:`plan_on_host`) and sent in one pinned, non-blocking copy; the device side (:func:`apply_plan`) reads no
value back, so its kernels queue behind the training step's instead of waiting for it.

Batch entries on this path (before :func:`images_from_plan`): ``jpeg`` uint8 [total bytes] (the batch's JPEGs
end to end, one tensor so the DataLoader shares it rather than pickling it), ``jpeg_offsets`` int64 [B+1],
``crop_box`` int64 [B,4] (top, left, height, width in source pixels), ``flip`` bool [B], ``jitter`` float32 [B,4]
(brightness, contrast and saturation factors, 1 meaning unchanged, and the hue shift). After it, ``image`` is
float32 [B,3,S,S], as :func:`~pacofr.data.transforms.normalize_images` gives on the CPU path.

Masks: with a masker that can (the random and structured maskers), the workers ship its per-sample draws
(``mask_draw_*`` entries) instead of the masks, and :func:`masks_from_draws` builds the masks and region
histograms on the device from them and the label maps: the same values as the workers'
(:mod:`pacofr.masking.on_device`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

import numpy as np
import torch
from torchvision.ops import roi_align
from torchvision.transforms.v2 import functional as F

from pacofr.data.transforms import (
    _GRAY_WEIGHTS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PLAIN_BILINEAR_MAX_SHRINK,
    normalize_images,
)

PLAN_KEYS = ("jpeg", "jpeg_offsets", "crop_box", "flip", "jitter")
# the entries of a batch whose masks the device builds: the masker's draws (pacofr.masking.on_device)
MASK_DRAW_PREFIX = "mask_draw_"
# per-sample entries a replaced (undecodable) image takes from its donor, so pixels, labels and masks agree
PER_SAMPLE_KEYS = ("seg", "mask", "covered", "covered_patches", "region_hist", "crop_box", "flip", "jitter")


def pack_jpegs(blobs: Sequence[bytes]) -> tuple[torch.Tensor, torch.Tensor]:
    """JPEG byte strings -> (one uint8 tensor of them end to end, int64 offsets [len + 1])."""
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in blobs], out=offsets[1:])
    return torch.from_numpy(np.frombuffer(b"".join(blobs), dtype=np.uint8).copy()), torch.from_numpy(offsets)


def unpack_jpegs(data: torch.Tensor, offsets: torch.Tensor) -> list[torch.Tensor]:
    """The inverse of :func:`pack_jpegs`: one 1-D uint8 CPU view per image."""
    bounds = offsets.tolist()
    return [data[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _decode(blobs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    # torchvision's decoders are deprecated since 0.29 in favour of torchcodec.decoders.decode_jpeg (same
    # arguments); torchvision's is the one every supported install has, so it stays until it is removed.
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        out = decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device)
    return out if isinstance(out, list) else [out]


@dataclass(frozen=True)
class StreamOrder:
    """The stream API :func:`decode_on_side_stream` orders the decode with, passed in so that a CPU test can record
    the order with fakes (:func:`cuda_stream_order` gives CUDA's)."""

    side: Any  # the stream the decode runs under (its outputs are allocated from this stream's pool)
    current: Any  # the caller's stream: every consumer of the decoded images runs there
    use: Callable[[Any], AbstractContextManager[Any]]  # makes a stream current (torch.cuda.stream)
    new_event: Callable[[], Any]  # an event with .record(stream) (torch.cuda.Event)


@cache
def _side_stream(device: torch.device) -> Any:
    return torch.cuda.Stream(device=device)  # one per device, for the life of the process, like cuBLAS handles


def cuda_stream_order(device: torch.device) -> StreamOrder:
    """The real objects: a dedicated side stream of ``device`` and the caller's current stream there."""
    return StreamOrder(_side_stream(device), torch.cuda.current_stream(device), torch.cuda.stream, torch.cuda.Event)


def decode_on_side_stream(decode: Callable[[], list[torch.Tensor]], order: StreamOrder) -> list[torch.Tensor]:
    """Run ``decode`` with ``order.side`` current and hand its images to ``order.current``, correctly ordered.

    Why: torchvision's CUDA ``decode_jpeg`` allocates its outputs on the *current* stream, then writes them from a
    private stream that does not wait for the current one. Called on the training stream, it can be handed a block
    that kernels queued there still read, and overwrite it before they run (pytorch/vision#9606, not merged). Under
    the side stream, its outputs come from the side stream's pool, which holds no block the training stream may
    still read: every image is ``record_stream``-ed on the training stream below, so the allocator returns it to
    the pool only once the kernels reading it there have run. The event makes the training stream wait for the
    decode (torchvision has the side stream wait for its private one) before any kernel reads an image.
    """
    with order.use(order.side):
        images = decode()
        ready = order.new_event()
        ready.record(order.side)
    order.current.wait_event(ready)
    for image in images:
        image.record_stream(order.current)
    return images


def _decode_on(blobs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    if device.type != "cuda":
        return _decode(blobs, device)
    return decode_on_side_stream(lambda: _decode(blobs, device), cuda_stream_order(device))


def decode_jpegs(blobs: list[torch.Tensor], device: torch.device | str) -> tuple[list[torch.Tensor | None], int]:
    """Decode a batch of JPEGs (CPU byte tensors) to uint8 [3,H,W] tensors on ``device`` (on CUDA, ordered before
    the current stream's next kernels: :func:`decode_on_side_stream`).

    One batched call (what nvJPEG wants); if it fails (a corrupt body: the batched decoder returns nothing
    then), each image is decoded alone and the ones that fail come back as None. Returns (images, failures).
    The workers have already rejected damaged files (:func:`pacofr.data.decode.jpeg_problem`): a failure here is
    one the device's decoder finds and the rule does not.
    """
    device = torch.device(device)
    try:
        return list(_decode_on(blobs, device)), 0
    except RuntimeError:
        images: list[torch.Tensor | None] = []
        for blob in blobs:
            try:
                images.append(_decode_on([blob], device)[0])
            except RuntimeError:
                images.append(None)
        return images, sum(image is None for image in images)


def replace_failed(batch: dict[str, Any], images: list[torch.Tensor | None]) -> list[torch.Tensor]:
    """Fill each undecoded image with a copy of a good sample of the batch, whole (pixels, labels, masks and
    draws), and mark it invalid if the batch has ``valid``; the batch size and the stream position stay."""
    good = [i for i, image in enumerate(images) if image is not None]
    if not good:
        raise RuntimeError(f"no image of the batch could be decoded on the device (keys {batch.get('key')})")
    out: list[torch.Tensor] = []
    for i, image in enumerate(images):
        if image is not None:
            out.append(image)
            continue
        donor = good[i % len(good)]
        out.append(images[donor])  # type: ignore[arg-type]
        for key in PER_SAMPLE_KEYS:
            value = batch.get(key)
            if isinstance(value, torch.Tensor):
                value[i] = value[donor]
        if isinstance(batch.get("key"), list):
            batch["key"][i] = batch["key"][donor]
        if isinstance(batch.get("valid"), torch.Tensor):
            batch["valid"][i] = False
    return out


@dataclass(frozen=True)
class DevicePlan:
    """Everything :func:`apply_plan` needs besides the pixels, made on the host from the workers' draws and the
    decoded images' shapes (host metadata): Python ints for the control flow, one float32 ``buffer`` for the values
    the kernels read, sent in one copy (:func:`send_plan`).

    ``buffer`` (float32, flat): rois [B,5] in chunk order (the index of the image in its size group's stack, then
    x1, y1, x2, y2 in source pixels) | ``inverse`` [B] (the row of sample i in the chunks' concatenated output;
    float32 holds these small integers exactly) | flip [B] (0 / 1) | brightness, contrast, saturation [B,3].
    """

    buffer: torch.Tensor
    batch: int
    size: int
    groups: tuple[tuple[int, ...], ...]  # the samples of each source size, stacked together
    chunks: tuple[tuple[int, int, int, int], ...]  # (group, roi_align sampling ratio, first roi row, end roi row)
    reordered: bool  # the chunks' order is not the batch order: apply ``inverse``
    hue: tuple[tuple[int, float], ...]  # (sample, shift) where the hue shift is not 0

    def rois(self, buffer: torch.Tensor) -> torch.Tensor:
        return buffer[: 5 * self.batch].view(self.batch, 5)

    def inverse(self, buffer: torch.Tensor) -> torch.Tensor:
        return buffer[5 * self.batch : 6 * self.batch].to(torch.int64)

    def flip(self, buffer: torch.Tensor) -> torch.Tensor:
        return buffer[6 * self.batch : 7 * self.batch].view(-1, 1, 1, 1) > 0.5

    def colour(self, buffer: torch.Tensor) -> torch.Tensor:
        return buffer[7 * self.batch :].view(self.batch, 3)


def plan_on_host(
    shapes: Sequence[tuple[int, ...]], crop_box: torch.Tensor, flip: torch.Tensor, jitter: torch.Tensor, size: int
) -> DevicePlan:
    """The :class:`DevicePlan` of a batch: ``shapes`` of the decoded images, the workers' host tensors ``crop_box``
    int64 [B,4] (top, left, h, w), ``flip`` bool [B], ``jitter`` float32 [B,4] (on another device they are read
    back first: a sync, so the training path passes the host tensors).

    Crops are resized per source size (one stack per size; one in practice, prep writes one size) and, within it,
    by one bilinear sample per output pixel where the crop is enlarged or shrunk by at most
    :data:`PLAIN_BILINEAR_MAX_SHRINK` (the CPU path's plain bilinear), ``ceil(shrink)`` samples per axis averaged
    where it is shrunk more (roi_align's adaptive sampling ratio 0): one chunk per (size, kind)."""
    batch = len(shapes)
    top, left, h, w = crop_box.cpu().to(torch.float32).unbind(1)
    plain = (torch.maximum(h, w) / size <= PLAIN_BILINEAR_MAX_SHRINK).tolist()
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, shape in enumerate(shapes):
        by_shape.setdefault(tuple(shape), []).append(i)
    groups = tuple(tuple(members) for members in by_shape.values())
    position = torch.empty(batch, dtype=torch.float32)  # the index of each image in its group's stack
    order: list[int] = []
    chunks: list[tuple[int, int, int, int]] = []
    for g, members in enumerate(groups):
        position[list(members)] = torch.arange(len(members), dtype=torch.float32)
        for ratio, kind in ((1, True), (0, False)):
            chosen = [i for i in members if plain[i] == kind]
            if chosen:
                chunks.append((g, ratio, len(order), len(order) + len(chosen)))
                order.extend(chosen)
    rois = torch.stack([position, left, top, left + w, top + h], dim=1)[order]
    inverse = torch.empty(batch, dtype=torch.float32)
    inverse[order] = torch.arange(batch, dtype=torch.float32)
    colour = jitter.cpu().to(torch.float32)
    hue = tuple((i, shift) for i, shift in enumerate(colour[:, 3].tolist()) if shift != 0)
    buffer = torch.cat([rois.flatten(), inverse, flip.cpu().to(torch.float32), colour[:, :3].flatten()])
    return DevicePlan(buffer, batch, size, groups, tuple(chunks), order != list(range(batch)), hue)


def send_plan(buffer: torch.Tensor, device: torch.device, pin: bool | None = None) -> torch.Tensor:
    """The plan's one host-to-device copy: from pinned memory and ``non_blocking`` on CUDA, so the host queues it
    and goes on (a copy from pageable memory waits for the stream's queued work). Pinning needs a CUDA runtime:
    ``pin`` defaults to whether the copy goes to CUDA and one is there."""
    if pin is None:
        pin = device.type == "cuda" and torch.cuda.is_available()
    if pin and not buffer.is_pinned():
        buffer = buffer.pin_memory()  # the caching host allocator keeps the block until the copy has run
    return buffer.to(device, non_blocking=pin)


@lru_cache(maxsize=16)
def _grey_weights(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """torchvision's grey weights as a (1, 3, 1, 1) tensor on ``device``, built once (as ``transforms._mean_std``)."""
    return torch.tensor(_GRAY_WEIGHTS, dtype=dtype, device=device).view(1, 3, 1, 1)


def _jitter(x: torch.Tensor, colour: torch.Tensor, hue: Sequence[tuple[int, float]]) -> torch.Tensor:
    """torchvision's brightness, contrast, saturation on 0..255 floats, each followed by uint8's clamp and
    truncation as on the CPU path; a factor of 1 leaves an image unchanged (exactly), so one batched pass
    serves every sample. ``colour`` [N,3] on ``x``'s device; ``hue``: (sample, shift) pairs, from the host."""
    weights = _grey_weights(x.device, x.dtype)

    def truncate(v: torch.Tensor) -> torch.Tensor:
        return v.clamp_(0, 255).floor_()

    b, c, s = (colour[:, i].to(x.dtype).view(-1, 1, 1, 1) for i in range(3))
    x = truncate(x * b)
    grey = ((x * weights).sum(1, keepdim=True)).floor_()
    x = truncate(c * x + (1 - c) * grey.mean((2, 3), keepdim=True))
    grey = ((x * weights).sum(1, keepdim=True)).floor_()
    x = truncate(s * x + (1 - s) * grey)
    for i, shift in hue:  # off by default (hue = 0) and costly anyway
        x[i] = F.adjust_hue(x[i] / 255.0, shift).mul_(255.0).floor_()
    return x


def apply_plan(
    images: Sequence[torch.Tensor],
    plan: DevicePlan,
    buffer: torch.Tensor,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> torch.Tensor:
    """The device side: uint8 [3,H,W] images + the plan's ``buffer`` on their device -> normalised float32
    [B,3,S,S]. Only queues kernels: no value is read back and nothing more is copied from the host.

    Resize: roi_align with ``aligned=True`` samples output pixel j at ``left + (j + 0.5) * w / S - 0.5`` (OpenCV's
    and torchvision's convention); see :func:`plan_on_host` for the samples per pixel. Border: at the crop's outer
    row and column roi_align blends in the source pixels just outside the crop, where the CPU path (crop, then
    resize: torchvision's convention) repeats the crop's edge; on a strong edge there those pixels differ by up to
    ~20 grey levels (the interior by 0.1-0.2 on average)."""
    rois, size = plan.rois(buffer), plan.size
    stacks = [torch.stack([images[i] for i in members]).to(torch.float32) for members in plan.groups]
    parts = [
        roi_align(stacks[g], rois[a:b], size, spatial_scale=1.0, sampling_ratio=ratio, aligned=True)
        for g, ratio, a, b in plan.chunks
    ]
    out = torch.cat(parts) if len(parts) > 1 else parts[0]
    if plan.reordered:
        out = out.index_select(0, plan.inverse(buffer))
    out = out.round_()  # the CPU path's resize returns uint8 (rounded)
    out = torch.where(plan.flip(buffer), out.flip(-1), out)
    out = _jitter(out, plan.colour(buffer), plan.hue)
    return normalize_images(out.to(torch.uint8), mean, std)


def augment_on_device(
    images: torch.Tensor | list[torch.Tensor],
    crop_box: torch.Tensor,
    flip: torch.Tensor,
    jitter: torch.Tensor,
    size: int,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> torch.Tensor:
    """uint8 images ([B,3,H,W] or a list of [3,H,W] of any sizes) + the workers' draws (host tensors) ->
    normalised float32 [B,3,S,S] on the images' device: crop + resize, flip, colour jitter, mean/std. One
    host-to-device copy (:func:`send_plan`), then :func:`apply_plan`."""
    if isinstance(images, torch.Tensor):
        images = list(images)
    plan = plan_on_host([tuple(image.shape) for image in images], crop_box, flip, jitter, size)
    return apply_plan(images, plan, send_plan(plan.buffer, images[0].device), mean, std)


def images_from_plan(
    batch: dict[str, Any],
    size: int,
    device: torch.device | str,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> int:
    """Replace the plan entries of a device-path batch by ``image`` (float32 [B,3,S,S] on ``device``), in place;
    entries already on ``device`` stay there. Returns the number of images that failed to decode (replaced)."""
    blobs = unpack_jpegs(batch.pop("jpeg").cpu(), batch.pop("jpeg_offsets").cpu())
    decoded, failures = decode_jpegs(blobs, device)
    images = replace_failed(batch, decoded) if failures else decoded  # type: ignore[assignment]
    batch["image"] = augment_on_device(
        images, batch.pop("crop_box"), batch.pop("flip"), batch.pop("jitter"), size, mean, std
    )
    return failures


def has_mask_draws(batch: Any) -> bool:
    """Whether ``batch`` carries mask draws for the device (:func:`masks_from_draws`) instead of masks."""
    return isinstance(batch, dict) and any(str(key).startswith(MASK_DRAW_PREFIX) for key in batch)


def masks_from_draws(batch: dict[str, Any], masker: Any, device: torch.device | str) -> None:
    """Replace the ``mask_draw_*`` entries of a batch by the masker's entries (``mask``, ``covered``,
    ``region_hist``, ``covered_patches``) built on ``device`` from them and the label maps (``seg`` moves to
    ``device``, non-blocking from pinned memory), in place: ``masker.batch_from_draws``, the same values as the
    workers' ``masker.batch`` (:mod:`pacofr.masking.on_device`), and no value read back. Run it before
    :func:`images_from_plan`, whose replacement of an undecodable image copies the masks of its donor."""
    if masker is None or not callable(getattr(masker, "batch_from_draws", None)):
        raise ValueError(f"the batch carries mask draws but the masker {masker!r} cannot build masks from them")
    device = torch.device(device)
    draws = {
        key[len(MASK_DRAW_PREFIX) :]: batch.pop(key).to(device, non_blocking=True)
        for key in [k for k in batch if str(k).startswith(MASK_DRAW_PREFIX)]
    }
    batch["seg"] = batch["seg"].to(device, non_blocking=True)
    batch.update(masker.batch_from_draws(batch["seg"], draws))


def nvjpeg_ordering_check(
    device: torch.device | str = "cuda", batch: int = 16, side: int = 256, trials: int = 10
) -> dict[str, Any]:
    """On a real GPU: is the device path's decode ordered with the training stream? For ``bench/gpu_check.sh``;
    returns a JSON-able dict (``ok``: True / False, or None with ``skipped`` where there is no CUDA device).

    Two hazards, each with the training stream kept busy by a chain of large matmuls queued first:

    - write after read (``war_*``): tensors the size of a decoded image are filled with a known value, summed by
      kernels queued behind the matmuls, and freed before those sums run; then a batch is decoded and the sums
      are checked. ``war_corrupted_side_stream`` counts the sums a decode through :func:`decode_jpegs` (the side
      stream) overwrote: it must be 0. ``war_corrupted_direct`` counts them for torchvision's decoder called on
      the training stream, the unguarded call (pytorch/vision#9606): any count above 0 shows the hazard is real on
      this machine; 0 only says this run did not hit it.
    - read after write (``raw_*``): a batch decoded through :func:`decode_jpegs` is read by the very next kernel
      on the training stream and compared with the CPU path's decode of the same bytes (simplejpeg);
      nvJPEG's IDCT and chroma upsampling differ from libjpeg-turbo's by a few grey levels at most, an image read
      before the decode wrote it by far more. ``ok`` needs ``raw_mean_abs_diff`` <= 2.
    """
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return {"check": "nvjpeg_ordering", "ok": None, "skipped": "needs a CUDA device"}
    import simplejpeg
    import torchvision

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side]
    arrays = []
    for _ in range(batch):  # smooth colour ramps plus noise: detail that a stale or foreign block would not have
        ramp = np.stack([(yy * rng.uniform(0.2, 1) + xx * rng.uniform(0.2, 1) + rng.uniform(0, 255)) % 256] * 3, -1)
        noise = rng.normal(0, 12, (side, side, 3))
        arrays.append(np.clip(ramp + noise + rng.uniform(-60, 60, 3), 0, 255).astype(np.uint8))
    jpegs = [simplejpeg.encode_jpeg(a, quality=90) for a in arrays]
    blobs = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]
    reference = torch.stack([torch.from_numpy(simplejpeg.decode_jpeg(j, colorspace="RGB")) for j in jpegs])
    reference = reference.permute(0, 3, 1, 2).to(torch.int16)

    with torch.cuda.device(device):
        hog = torch.randn(4096, 4096, device=device)

        def busy() -> None:  # ~10-30 ms of queued work on the training stream
            x = hog
            for _ in range(8):
                x = (x @ hog).mul_(1e-3)

        def war(decode: Callable[[list[torch.Tensor]], Any]) -> int:
            corrupted = 0
            value, expected = 7, 7 * 3 * side * side
            for _ in range(trials):
                probes = [torch.full((3, side, side), value, dtype=torch.uint8, device=device) for _ in blobs]
                torch.cuda.synchronize(device)
                busy()
                sums = torch.stack([p.sum(dtype=torch.int64) for p in probes])
                del probes  # back to the training stream's pool while the sums are still queued
                images = decode(blobs)
                torch.cuda.synchronize(device)
                corrupted += int((sums != expected).sum())
                del images
            return corrupted

        decode_jpegs(blobs, device)  # warm-up: nvJPEG's handles and buffers
        war_direct = war(lambda b: _decode(b, device))
        war_side = war(lambda b: decode_jpegs(b, device))
        diffs = []
        for _ in range(trials):
            torch.cuda.synchronize(device)
            busy()
            images, failures = decode_jpegs(blobs, device)
            consumed = torch.stack(images).to(torch.int16)  # type: ignore[arg-type]  # the first reader
            torch.cuda.synchronize(device)
            diffs.append((consumed.cpu() - reference).abs())
        diff = torch.stack(diffs)
    mean_diff = float(diff.float().mean())
    return {
        "check": "nvjpeg_ordering",
        "device": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "images": batch,
        "side": side,
        "trials": trials,
        "war_corrupted_side_stream": war_side,
        "war_corrupted_direct": war_direct,
        "raw_max_abs_diff": int(diff.max()),
        "raw_mean_abs_diff": round(mean_diff, 4),
        "ok": war_side == 0 and mean_diff <= 2.0,
    }
