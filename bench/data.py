"""Input-pipeline speed per CPU core, next to a bare webdataset + PIL decode loop over the same shards.

    .venv/bin/python bench/data.py [--root data/synth-demo] [--images 512] [--gpu-rate 4600]

Runs on ONE core (affinity pinned, one torch/OpenCV thread), in-process, in the same run:

* ``bare_pil``      : ``webdataset.WebDataset`` over the shards, PIL decode of the JPEG to an RGB array;
* ``bare_pil+seg``  : the same plus PIL decode of the parsing map (work the real pipeline cannot skip);
* ``pipeline``      : the real thing: ``PretrainDataModule.train_dataloader()`` (``TrainShardStream``: read,
  header checks, decode (simplejpeg + OpenCV), uint8 joint augmentation (OpenCV), collate,
  ``StructuredMasker.batch``), first batch untimed (it fills the shuffle buffer). It yields uint8 images;
  the float conversion and normalisation run on the GPU (``on_after_batch_transfer``), so they are not in
  this per-core rate;
* ``stages``        : the pipeline's per-image cost split by stage (library functions called one by one; the
  GPU-side normalisation timed on the CPU for reference);
* ``decoders``      : JPEG and PNG decode alone from memory: PIL, ``torchvision.io``, OpenCV and
  ``simplejpeg``;
* ``device images`` : the device image path (``images_on_device=True``, :mod:`pacofr.data.device_images`): the
  workers' share (read, check, label-map decode and transform, the draws of the augmentation and of the masker,
  collate of JPEG bytes), then the device's share (masks and region histograms from the draws,
  :mod:`pacofr.masking.on_device`; batched JPEG decode, crop + resize, flip, jitter, normalisation) on
  ``--device``: on a CPU it is that whole work run in the main process (for reference), on CUDA its CPU time is
  the host's share of nvJPEG and the kernel launches, which counts against the CPU budget too;
* ``device stages`` : the workers' share split by stage, as ``stages``.

Every loop runs as in a data worker: the heap this process holds when it starts them (torch, Lightning) is
frozen first (``worker_loader.freeze_inherited_heap``, what each worker does), so the collector's full passes
over it are not counted; the baseline rows run under the same rule.

Figures are images per CPU-second of this process, so they hold on a shared machine (wall time would also count
the time other processes held the core; wall-clock rates are printed too; a loaded machine still slows a core
through its caches: compare rows of the same run). Prints a markdown table, one JSON line per row and a
summary: pipeline / bare ratio against the 0.8 goal, the fastest decoders, and the CPU cores per GPU needed
to feed ``--gpu-rate`` images/s (default 4,600: the ViT-B/16 PaCo-FR step rate that ``bench/RESULTS.md`` and
``docs/scaling.md`` assume, not yet measured on a GPU) on the CPU path (goal <= 6) and on the device path (goal
<= 3): the workers' share plus the host's share of the device work, measured with ``--device cuda``, estimated
otherwise as the Huffman share (~60 %) of this run's simplejpeg decode, the part nvJPEG's hybrid backend runs on
the host for small images (an upper bound: the A100/H100 hardware decoder and nvJPEG's GPU Huffman run none).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import io  # noqa: E402
import itertools  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

# the repo root (for bench.common) and src/ (pacofr without an installed package, e.g. on a bare GPU node)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import simplejpeg  # noqa: E402
import torch  # noqa: E402
import webdataset as wds  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.io import ImageReadMode, decode_jpeg, decode_png  # noqa: E402

from bench.common import emit_json, environment, markdown_table  # noqa: E402
from pacofr.data.batch_builder import collate, masker_labels  # noqa: E402
from pacofr.data.datamodule import PretrainDataModule  # noqa: E402
from pacofr.data.decode import (
    decode_arrays,  # noqa: E402
    decode_labels,  # noqa: E402
)
from pacofr.data.device_images import MASK_DRAW_PREFIX, images_from_plan, masks_from_draws  # noqa: E402
from pacofr.data.format import KEY_IMAGE, KEY_SEG, patch_grid, read_manifest  # noqa: E402
from pacofr.data.lanes import derive_seed  # noqa: E402
from pacofr.data.shard_reader import iter_shard  # noqa: E402
from pacofr.data.stream_stats import StreamStats  # noqa: E402
from pacofr.data.transforms import JointTransform, normalize_images  # noqa: E402
from pacofr.data.worker_loader import freeze_inherited_heap  # noqa: E402
from pacofr.masking import StructuredMasker  # noqa: E402

GOAL_RATIO = 0.8
GOAL_CORES_CPU_PATH = 6.0  # CPU cores per GPU on the CPU image path (docs/scaling.md, "Input rate")
GOAL_CORES_DEVICE_PATH = 3.0
HUFFMAN_SHARE = 0.6  # of a libjpeg-turbo decode (pacofr.data.decode.jpeg_problem's docstring): nvJPEG's host part


class Clock:
    """Wall and process-CPU seconds of a block."""

    def __enter__(self) -> Clock:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def pin_one_core() -> int | None:
    """Run on one core only (the first one allowed); returns it, or None where affinity is unsupported.
    Worker processes started later inherit the pin: :func:`workers_loop` lifts it first."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    if hasattr(os, "sched_setaffinity"):
        core = sorted(os.sched_getaffinity(0))[0]
        os.sched_setaffinity(0, {core})
        return core
    return None


def shard_urls(root: Path, split: str) -> list[str]:
    info = read_manifest(root).split(split)
    return [str(root / name) for name in info.filenames]


def endless(make: Callable[[], Iterator]) -> Iterator:
    """Restart an iterator factory whenever it runs out (small test datasets)."""
    while True:
        got = False
        for item in make():
            got = True
            yield item
        if not got:
            raise RuntimeError("the shards hold no sample")


def rate_row(name: str, images: int, clock: Clock, **extra: Any) -> dict[str, Any]:
    return {
        "bench": "data",
        "row": name,
        "images": images,
        "img_per_cpu_s": round(images / clock.cpu, 1),
        "img_per_s_wall": round(images / clock.wall, 1),
        "ms_per_img_cpu": round(1000 * clock.cpu / images, 3),
        **extra,
    }


# --- the bare loops -------------------------------------------------------------------------------------
def bare_loop(urls: list[str], images: int, with_seg: bool) -> Clock:
    def samples():
        return iter(wds.WebDataset(urls, shardshuffle=False, empty_check=False))

    stream = endless(samples)
    next(stream)  # open the first shard outside the clock
    with Clock() as clock:
        for sample in itertools.islice(stream, images):
            array = np.asarray(Image.open(io.BytesIO(sample[KEY_IMAGE])).convert("RGB"))
            if with_seg:
                np.asarray(Image.open(io.BytesIO(sample[KEY_SEG])))
            del array
    return clock


# --- the real pipeline --------------------------------------------------------------------------------------
def pipeline_datamodule(args: argparse.Namespace, workers: int, on_device: bool = False) -> PretrainDataModule:
    return PretrainDataModule(
        root=str(args.root),
        batch_size=args.batch,
        num_workers=workers,
        image_size=args.image_size,
        seed=0,
        masker=StructuredMasker(patch_size=args.patch_size, mask_ratio=args.mask_ratio),
        shuffle_buffer=args.shuffle_buffer,
        images_on_device=on_device,
    )


def pipeline_loop(args: argparse.Namespace) -> tuple[Clock, int]:
    loader = iter(pipeline_datamodule(args, 0).train_dataloader())
    first = next(loader)  # fills the shuffle buffer: not steady state
    for key in ("image", "mask", "region_hist", "covered_patches"):
        if key not in first:
            raise RuntimeError(f"pipeline batch lacks {key!r}: got {sorted(first)}")
    batches = max(1, args.images // args.batch)
    with Clock() as clock:
        for _ in range(batches):
            next(loader)
    return clock, batches * args.batch


def device_path_loops(args: argparse.Namespace) -> tuple[Clock, Clock, int]:
    """The device image path: (the workers' share, timed through the in-process loader; the device's share on
    ``--device``, synchronised per batch; images)."""
    device = torch.device(args.device)
    datamodule = pipeline_datamodule(args, 0, on_device=True)
    loader = iter(datamodule.train_dataloader())
    next(loader)  # fills the shuffle buffer
    batches = max(1, args.images // args.batch)
    with Clock() as workers:
        plans = [next(loader) for _ in range(batches)]
    if not any(key.startswith(MASK_DRAW_PREFIX) for key in plans[0]):
        raise RuntimeError(f"the device path's batch carries no mask draws: {sorted(plans[0])}")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    warm = {k: v.clone() if isinstance(v, torch.Tensor) else list(v) for k, v in plans[0].items()}
    masks_from_draws(warm, datamodule.masker, device)  # first calls initialise nvJPEG and the kernels: untimed
    images_from_plan(warm, args.image_size, device)
    sync()
    with Clock() as on_device:
        for batch in plans:
            masks_from_draws(batch, datamodule.masker, device)
            images_from_plan(batch, args.image_size, device)
            sync()
    return workers, on_device, batches * args.batch


def workers_loop(args: argparse.Namespace, cores: set[int] | None) -> tuple[Clock, int]:
    """The DataLoader with ``--workers`` processes (wall time; the CPU clock of this process misses them)."""
    if cores is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    loader = iter(pipeline_datamodule(args, args.workers).train_dataloader())
    for _ in range(args.workers):  # every worker's first batch fills its shuffle buffer
        next(loader)
    batches = max(args.workers, args.images // args.batch)
    with Clock() as clock:
        for _ in range(batches):
            next(loader)
    return clock, batches * args.batch


def stage_costs(args: argparse.Namespace) -> tuple[dict[str, float], float]:
    """ms of CPU per image for each pipeline stage, through the library's own functions, and the ms per
    image of the normalisation (uint8 -> float32, mean/std) timed on the CPU for reference: in training
    it runs on the GPU (``PretrainDataModule.on_after_batch_transfer``), outside the workers' rate."""
    root = Path(args.root)
    info = read_manifest(root).split("train")
    transform = JointTransform(args.image_size, train=True)
    masker = StructuredMasker(patch_size=args.patch_size, mask_ratio=args.mask_ratio)
    stats = StreamStats()
    raws: list[dict] = []
    cpu = dict.fromkeys(("read+check", "decode", "augment", "mask", "collate"), 0.0)

    def read_all():
        for name, length in zip(info.filenames, info.shard_lengths):
            for _, raw in iter_shard(root / name, length, stats, lambda msg: None):
                if raw is not None:
                    yield raw

    stream = endless(read_all)
    t = time.process_time()
    raws = list(itertools.islice(stream, args.stage_images))
    cpu["read+check"] = time.process_time() - t
    items = []
    for raw in raws:
        t = time.process_time()
        image, seg = decode_arrays(raw)
        t1 = time.process_time()
        gen = torch.Generator().manual_seed(derive_seed("augment", 0, 0, raw["__key__"]))
        image, seg, _ = transform.apply(image, seg, gen)
        t2 = time.process_time()
        cpu["decode"] += t1 - t
        cpu["augment"] += t2 - t1
        items.append({"image": image, "seg": seg, "key": raw["__key__"]})
    normalise = 0.0
    for start in range(0, len(items), args.batch):  # one batch alive at a time, as in the loader
        t = time.process_time()
        batch = collate(items[start : start + args.batch])
        t1 = time.process_time()
        gens = [torch.Generator().manual_seed(derive_seed("mask", 0, 0, key)) for key in batch["key"]]
        batch.update(masker.batch(masker_labels(masker, batch["seg"].numpy()), gens))
        t2 = time.process_time()
        normalize_images(batch["image"], transform.config.mean, transform.config.std)
        cpu["collate"] += t1 - t
        cpu["mask"] += t2 - t1
        normalise += time.process_time() - t2
    normalise_ms = round(1000 * normalise / len(raws), 3)
    return {stage: round(1000 * seconds / len(raws), 3) for stage, seconds in cpu.items()}, normalise_ms, raws


def device_stage_costs(args: argparse.Namespace, raws: list[dict]) -> dict[str, float]:
    """ms of CPU per image of the device path's work in the workers, by stage (read + check is the CPU path's):
    the JPEG structure check + label-map PNG decode, the augmentation's draws + the label map's crop, resize and
    flip, the masker's draws, collate (JPEG bytes packed, label maps and draws stacked)."""
    transform = JointTransform(args.image_size, train=True)
    masker = StructuredMasker(patch_size=args.patch_size, mask_ratio=args.mask_ratio)
    cpu = dict.fromkeys(("labels: check JPEG + decode PNG", "labels: draws + transform", "mask draws", "collate"), 0.0)
    items = []
    for raw in raws:
        t = time.process_time()
        seg = decode_labels(raw)
        t1 = time.process_time()
        gen = torch.Generator().manual_seed(derive_seed("augment", 0, 0, raw["__key__"]))
        box, flip, colour = transform.draw(*seg.shape, gen)
        item = {
            "jpeg": raw[KEY_IMAGE],
            "seg": transform.apply_labels(seg, box, flip),
            "crop_box": np.asarray(box, dtype=np.int64),
            "flip": np.asarray(flip, dtype=np.bool_),
            "jitter": np.asarray(colour, dtype=np.float32),
            "key": raw["__key__"],
        }
        t2 = time.process_time()
        cpu["labels: check JPEG + decode PNG"] += t1 - t
        cpu["labels: draws + transform"] += t2 - t1
        items.append(item)
    for start in range(0, len(items), args.batch):
        t = time.process_time()
        batch = collate(items[start : start + args.batch])
        t1 = time.process_time()
        rows, cols = patch_grid(batch["seg"], args.patch_size)
        gens = [torch.Generator().manual_seed(derive_seed("mask", 0, 0, key)) for key in batch["key"]]
        draws = [masker.draws(gen, rows * cols) for gen in gens]
        batch.update({MASK_DRAW_PREFIX + name: torch.stack([d[name] for d in draws]) for name in draws[0]})
        t2 = time.process_time()
        cpu["collate"] += t1 - t
        cpu["mask draws"] += t2 - t1
    return {stage: round(1000 * seconds / len(raws), 3) for stage, seconds in cpu.items()}


# --- decoders alone ------------------------------------------------------------------------------------------
def jpeg_decoders() -> dict[str, Callable[[bytes], Any]]:
    found: dict[str, Callable[[bytes], Any]] = {
        "PIL": lambda b: np.asarray(Image.open(io.BytesIO(b)).convert("RGB")),
        "torchvision.io": lambda b: decode_jpeg(
            torch.frombuffer(bytearray(b), dtype=torch.uint8), mode=ImageReadMode.RGB
        ),
        "opencv": lambda b: cv2.cvtColor(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB),
        "simplejpeg": lambda b: simplejpeg.decode_jpeg(b, colorspace="RGB"),
    }
    return found


def png_decoders() -> dict[str, Callable[[bytes], Any]]:
    found: dict[str, Callable[[bytes], Any]] = {
        "PIL": lambda b: np.asarray(Image.open(io.BytesIO(b))),
        "torchvision.io": lambda b: decode_png(
            torch.frombuffer(bytearray(b), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED
        ),
        "opencv": lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED),
    }
    return found


def decoder_rows(urls: list[str], count: int, repeats: int) -> list[dict[str, Any]]:
    samples = list(itertools.islice(endless(lambda: iter(wds.WebDataset(urls, shardshuffle=False))), count))
    blobs = {"jpeg": [s[KEY_IMAGE] for s in samples], "png": [s[KEY_SEG] for s in samples]}
    rows = []
    for kind, decoders in (("jpeg", jpeg_decoders()), ("png", png_decoders())):
        reference = None
        for name, decode in decoders.items():
            first = np.asarray(decode(blobs[kind][0]))
            shape = first.shape if first.ndim == 2 or first.shape[-1] in (1, 3) else first.transpose(1, 2, 0).shape
            if reference is None:
                reference = shape
            elif tuple(s for s in shape if s != 1) != tuple(s for s in reference if s != 1):
                raise RuntimeError(f"{name} decoded {kind} to {shape}, PIL to {reference}")
            best = None
            for _ in range(repeats):  # best of a few passes: the least disturbed by other processes
                with Clock() as clock:
                    for blob in blobs[kind]:
                        decode(blob)
                best = clock if best is None or clock.cpu < best.cpu else best
            rows.append(rate_row(f"decode {kind}: {name}", len(blobs[kind]), best, kind=kind, decoder=name))
    return rows


# --- main ------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=Path("data/synth-demo"), help="pacofr-faces/1 dataset folder")
    p.add_argument("--split", default="train")
    p.add_argument("--images", type=int, default=512, help="timed images per loop")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224, help="pipeline output side")
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--shuffle-buffer", type=int, default=256)
    p.add_argument("--stage-images", type=int, default=256, help="images for the per-stage split")
    p.add_argument("--decode-images", type=int, default=256, help="images for the decoder comparison")
    p.add_argument("--decode-repeats", type=int, default=3)
    p.add_argument("--gpu-rate", type=float, default=4600.0, help="GPU training images/s to feed (per GPU)")
    p.add_argument("--all-cores", action="store_true", help="do not pin to one core")
    p.add_argument("--workers", type=int, default=0, help="also time the DataLoader with this many worker processes")
    p.add_argument("--device", default="cpu", help="where the device image path decodes and augments (cpu, cuda)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not (args.root / "_info.json").exists():
        sys.exit(f"no dataset at {args.root}: run `make data-demo` or pass --root (a pacofr-faces/1 folder)")
    cores = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    core = None if args.all_cores else pin_one_core()
    urls = shard_urls(args.root, args.split)
    freeze_inherited_heap(in_worker_only=False)  # what every data worker does at start (module docstring)

    rows: list[dict[str, Any]] = []
    # bare first and last: their spread shows how much the machine's load moved during the run
    rows.append(rate_row("bare_pil", args.images, bare_loop(urls, args.images, with_seg=False), baseline=True))
    clock, n = pipeline_loop(args)
    rows.append(rate_row("pipeline", n, clock, batch=args.batch, image_size=args.image_size))
    rows.append(rate_row("bare_pil+seg", args.images, bare_loop(urls, args.images, with_seg=True)))
    rows.append(rate_row("bare_pil (again)", args.images, bare_loop(urls, args.images, with_seg=False)))
    stages, normalise_ms, raws = stage_costs(args)
    device_stages = {"read+check": stages["read+check"], **device_stage_costs(args, raws)}
    del raws
    workers_clock, device_clock, n = device_path_loops(args)
    rows.append(rate_row("device images: workers' share", n, workers_clock, images_on_device=True))
    rows.append(rate_row(f"device images: decode + augment on {args.device}", n, device_clock, device=args.device))
    rows.extend(decoder_rows(urls, args.decode_images, args.decode_repeats))
    if args.workers > 0:
        clock, n = workers_loop(args, cores)
        per_worker = round(n / clock.wall / args.workers, 1)
        rows.append(rate_row(f"pipeline, {args.workers} workers", n, clock, img_per_s_per_worker=per_worker))
        rows[-1].update(img_per_cpu_s=None, ms_per_img_cpu=None)  # the workers' CPU time is not ours

    bare = [r["img_per_cpu_s"] for r in rows if r["row"].startswith("bare_pil") and "+seg" not in r["row"]]
    bare_rate = sum(bare) / len(bare)
    pipe = next(r for r in rows if r["row"] == "pipeline")
    ratio = pipe["img_per_cpu_s"] / bare_rate
    # CPU ms per image on the device path: the workers', plus the host's share of the device work on CUDA (on a
    # CPU "device" that work is the decode itself, which a GPU would take off the CPU)
    fastest = {}
    for kind in ("jpeg", "png"):
        mine = [r for r in rows if r.get("kind") == kind]
        fastest[kind] = max(mine, key=lambda r: r["img_per_cpu_s"])["decoder"]
    workers_ms = 1000 * workers_clock.cpu / n
    measured_host = args.device.startswith("cuda")
    if measured_host:
        device_host_ms = 1000 * device_clock.cpu / n
    else:  # nvJPEG's hybrid backend: Huffman decoding on the host (see the module docstring): an upper bound
        simplejpeg_ms = next(r["ms_per_img_cpu"] for r in rows if r["row"] == "decode jpeg: simplejpeg")
        device_host_ms = HUFFMAN_SHARE * simplejpeg_ms
    device_path_ms = workers_ms + device_host_ms
    cores_cpu = args.gpu_rate / pipe["img_per_cpu_s"]
    cores_workers = args.gpu_rate * workers_ms / 1000
    cores_device = args.gpu_rate * device_path_ms / 1000

    def verdict(cores: float, goal: float) -> str:
        return f"met (goal <= {goal:g})" if cores <= goal else f"missed by {cores - goal:.1f} (goal <= {goal:g})"

    env = environment(f"cpu core {core}" if core is not None else "cpu (all cores)")
    summary = {
        "bench": "data_summary",
        "pipeline_img_per_cpu_s": pipe["img_per_cpu_s"],
        "bare_pil_img_per_cpu_s": round(bare_rate, 1),
        "pipeline_over_bare": round(ratio, 4),
        "goal": GOAL_RATIO,
        "stage_ms_per_img_cpu": stages,
        "normalise_ms_per_img_cpu_done_on_gpu": normalise_ms,
        "fastest_decoder": fastest,
        "gpu_rate": args.gpu_rate,
        "cores_per_gpu": round(cores_cpu, 2),
        "cores_per_gpu_goal": GOAL_CORES_CPU_PATH,
        "device_stage_ms_per_img_cpu": device_stages,
        "device_path_workers_ms_per_img": round(workers_ms, 3),
        "device_path_host_ms_per_img": round(device_host_ms, 3),
        "device_path_host_share": "measured" if measured_host else f"estimated: {HUFFMAN_SHARE} x simplejpeg decode",
        "device_path_cpu_ms_per_img": round(device_path_ms, 3),
        "cores_per_gpu_device_path_workers": round(cores_workers, 2),
        "cores_per_gpu_device_path": round(cores_device, 2),
        "cores_per_gpu_device_path_goal": GOAL_CORES_DEVICE_PATH,
        "image_size": args.image_size,
        "source_image_size": read_manifest(args.root).image_size,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "env": env,
    }

    sizes = f"{summary['source_image_size']} px -> {args.image_size} px"
    print(f"\n## Data pipeline: {args.root} ({sizes}), {env['device']}\n")
    columns = [
        ("row", "loop"),
        ("img_per_cpu_s", "img/CPU-s"),
        ("ms_per_img_cpu", "ms/img"),
        ("img_per_s_wall", "img/s wall"),
    ]
    print(markdown_table(rows, columns))
    print()
    print(f"- pipeline / bare webdataset+PIL: {ratio:.3f} (goal >= {GOAL_RATIO})")
    print(f"- pipeline stages, ms of CPU per image: {stages}")
    print(f"- not in the workers (runs on the GPU): uint8 -> normalised float32, {normalise_ms} ms/img on this CPU")
    print(f"- fastest decoders: JPEG {fastest['jpeg']}, PNG {fastest['png']}")
    print(f"- device path, workers' stages, ms of CPU per image: {device_stages}")
    host = (f"{device_host_ms:.3f} ms measured on {args.device}" if measured_host else
            f"{device_host_ms:.3f} ms estimated ({HUFFMAN_SHARE} x simplejpeg's {simplejpeg_ms} ms: nvJPEG's hybrid "
            "Huffman decode, an upper bound; measure it with --device cuda)")  # fmt: skip
    print(f"- CPU cores per GPU to feed {args.gpu_rate:g} img/s (figures from CPU time):")
    print(f"  - CPU path: {cores_cpu:.2f} ({1000 / pipe['img_per_cpu_s']:.3f} ms/img): "
          f"{verdict(cores_cpu, GOAL_CORES_CPU_PATH)}")  # fmt: skip
    print(f"  - device path: {cores_device:.2f} = workers {cores_workers:.2f} ({workers_ms:.3f} ms/img) + host share "
          f"{cores_device - cores_workers:.2f} ({host}): {verdict(cores_device, GOAL_CORES_DEVICE_PATH)}; "
          f"the workers alone: {verdict(cores_workers, GOAL_CORES_DEVICE_PATH)}")  # fmt: skip
    print()
    for row in rows:
        emit_json(row)
    emit_json(summary)


if __name__ == "__main__":
    main()
