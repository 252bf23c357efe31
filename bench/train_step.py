"""Training-step speed of PaCo-FR next to a plain MAE step built from the same code, in one run.

    .venv/bin/python bench/train_step.py                       # CPU: tiny (the demo: configs/pretrain/tiny.yaml + ...)
    .venv/bin/python bench/train_step.py --size base --batch 256 --peak 790     # one H100/H200, < 5 min

Rows (each: images/s, step time, achieved TFLOP/s, MFU against ``--peak``, peak memory and memory per image):

* ``mae``    : the ``MAE`` objective with the same encoder and decoder;
* ``pacofr`` : the configured objective (``PaCoFR``: codebook, replaced patches, spatial head, covered weight);

each eager and ``torch.compile``d (the library's compile, ``PretrainObjective.compile_losses``: the model forward
and every loss as one graph; ``--compile-model-only`` adds rows with the model forward compiled alone and the
losses eager, its earlier compile), through a bare loop that runs the training step itself
(``pacofr.training.step.train_step``: what ``PretrainModule`` runs through Lightning's hooks, per-group clipping,
lr scales and warmups included), plus the compiled PaCo-FR step through
``PretrainModule`` and ``Trainer.fit`` (in-memory pre-made batches, logger,
callbacks, progress bar and logging cadence as configured) for Lightning's loop overhead. Input is
synthetic: random images, random masks with exactly the model's masked count, random region histograms.
Incubation is off (it measures the main step). bf16 autocast on CUDA, fp32 on CPU. The float32 numeric policy
(TF32 or not) is the benchmarked config's ``float32_matmul_precision``, applied by the function ``pacofr fit``
applies it with (``pacofr.training.numerics.apply_numerics``): the bench times the regime training runs.

Timing: CUDA synchronises only at both ends of the timed window (no per-step sync, so the host can run
ahead as in training). CPU takes the median of per-step process CPU times (``time.process_time``: the
step's cost, not the load of a shared machine; "1st step s" stays wall time) and, by default
(``--interleave``), times the bare rows together, one step of each in turn, so that what load remains
(caches, memory bandwidth) falls on every row alike. Timed one after the other in wall time, the same
build measured 0.73x and 1.04x PaCo-FR/MAE compiled in two runs on the loaded 2-core CI machine.
Prints a markdown table, one JSON line per row and one summary JSON line (ratios, overhead, goals).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# the repo root (for bench.common) and src/ (pacofr without an installed package, e.g. on a bare GPU node)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from torch.optim.lr_scheduler import LambdaLR  # noqa: E402

from bench.common import (  # noqa: E402
    PRETRAIN_RUNS,
    device_name,
    emit_json,
    environment,
    load_pretrain_config,
    markdown_table,
    peak_rss_bytes,
    reset_peak_rss,
    rss_bytes,
)
from pacofr.objectives import MAE, PaCoFR  # noqa: E402
from pacofr.optim import scaled_lr  # noqa: E402
from pacofr.training.module import PretrainModule  # noqa: E402
from pacofr.training.nonfinite import NonFiniteGuard  # noqa: E402
from pacofr.training.numerics import PRECISIONS, apply_numerics, config_precision  # noqa: E402
from pacofr.training.step import build_optimizer, train_step  # noqa: E402
from pacofr.training.synthetic_batches import PremadeBatches, synthetic_batches  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# the config files (`pacofr fit --config` order) benchmarked by default: the demo at tiny, else PaCo-FR at ViT-B/16
CONFIGS = {"tiny": PRETRAIN_RUNS["demo_tiny"], "other": PRETRAIN_RUNS["pacofr_vit_b16"]}
GOALS = {"pacofr_over_mae": 0.95, "mfu": 0.40, "lightning_overhead_pct": 3.0}


# --- configuration ------------------------------------------------------------------------------------
def load_config(paths: list[Path]) -> dict[str, Any]:
    """The config files merged in order, as `pacofr fit --config A --config B` merges them."""
    return load_pretrain_config(paths)


def build_module(config: dict[str, Any], args: argparse.Namespace, method: str) -> PretrainModule:
    """The config's module for ``method`` (pacofr = its objective as configured, mae = the MAE objective with the
    same encoder and decoder), at ``args``' size and geometry, incubation off, compile off (rows compile)."""
    spec = config["model"]["objective"]
    kwargs = dict(spec.get("init_args") or {})
    if args.size != kwargs.get("encoder_size"):
        # another size than the config's: its decoder defaults too, unless given explicitly
        kwargs.update(encoder_size=args.size, decoder_depth=None, decoder_dim=None)
    masker = config["data"]["masker"]["init_args"]
    kwargs.update(img_size=args.img_size, patch_size=masker["patch_size"], mask_ratio=masker["mask_ratio"])
    for name in ("decoder_depth", "decoder_dim"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    kwargs["grad_checkpointing"] = args.grad_checkpointing
    if method == "mae":
        core = ("encoder_size", "img_size", "patch_size", "decoder_depth", "decoder_dim")
        core_kwargs = {k: kwargs[k] for k in core if k in kwargs}
        objective = MAE(**core_kwargs, mask_ratio=args.mae_mask_ratio, grad_checkpointing=args.grad_checkpointing)
    else:
        module_name, _, cls_name = spec["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module_name), cls_name)
        if issubclass(cls, PaCoFR):
            kwargs["incubation_steps"] = 0  # the main step is what is measured (steps win over incubation_epochs)
        objective = cls(**kwargs)
    settings = {k: v for k, v in config["model"].items() if k != "objective"}
    return PretrainModule(objective, **{**settings, "compile": False})


# --- synthetic input ----------------------------------------------------------------------------------
# --- the bare loop --------------------------------------------------------------------------------------
def bare_optimizer(module: PretrainModule, batch: int, total_steps: int) -> tuple[torch.optim.Optimizer, LambdaLR]:
    """The module's AdamW groups and schedules, built by the function the module builds them with
    (``pacofr.training.step.build_optimizer``: per-group lr scale and warmup, fused), without a Trainer."""
    hp = module.hparams
    groups = module.named_param_groups()
    for g in groups:
        del g["names"]
    return build_optimizer(
        module.objective, groups, lr=scaled_lr(hp.base_lr, batch), betas=tuple(hp.betas), warmup_steps=hp.warmup_steps,
        total_steps=total_steps, min_lr_ratio=hp.min_lr_ratio,
    )  # fmt: skip


def bare_step_fn(module: PretrainModule, batches: list[dict], autocast: Callable, clip: float | None, steps: int):
    """One training step as a closure: the training step itself (``pacofr.training.step.train_step``, the parts
    and order of ``PretrainModule``'s step: the objective's step, the all-ranks finite flag, backward, per-group
    gradient norms, the device decision handed to the fused AdamW as ``found_inf``, per-group clipping at each
    group's limit, the optimiser and schedules, the gated ``after_step`` and the moment resets). No host sync."""
    optimizer, schedule = bare_optimizer(module, batches[0]["image"].shape[0], steps)
    guard = NonFiniteGuard(module.hparams.max_nonfinite_steps)
    objective = module.objective
    counter = {"i": 0}

    def step() -> None:
        batch = batches[counter["i"] % len(batches)]
        counter["i"] += 1
        i = counter["i"]
        train_step(objective, optimizer, schedule, batch, i, guard=guard, max_grad_norm=clip, autocast=autocast)

    return step, optimizer


# --- measurement ----------------------------------------------------------------------------------------
@dataclass
class Measurement:
    label: str
    method: str
    mode: str  # eager | compiled (the library's: forward + losses) | compiled-model (the forward alone)
    loop: str
    batch: int
    step_s: float
    first_step_s: float
    peak_mem_bytes: int | None = None
    static_mem_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def step_clock(device: torch.device) -> float:
    """The clock of per-step times: wall time on CUDA; on CPU the process's CPU time, i.e. what the step
    costs, without the time the scheduler gives the other jobs of a shared machine (with one thread and
    more runnable jobs than cores, wall time measures the load as much as the step)."""
    return time.perf_counter() if device.type == "cuda" else time.process_time()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_reset(device: torch.device) -> int | None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    reset_peak_rss()
    return rss_bytes()


def memory_peak(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return peak_rss_bytes()


def memory_now(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return rss_bytes()


def time_loop(
    step: Callable[[], None], warmup: int, steps: int, device: torch.device, probe: Callable[[], None] = lambda: None
) -> tuple[float, float]:
    """(seconds per step, seconds of the first step: compile time when compiled); ``probe`` runs just before
    and just after the timed window."""
    t0 = time.perf_counter()
    step()
    sync(device)
    first = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        step()
    sync(device)
    probe()
    per_step = []
    start = time.perf_counter()
    for _ in range(steps):
        t = step_clock(device)
        step()
        per_step.append(step_clock(device) - t)
    sync(device)
    window = time.perf_counter() - start
    probe()
    if not steps:
        return float("nan"), first
    return (window / steps if device.type == "cuda" else statistics.median(per_step)), first


def time_interleaved(prepared: list[tuple], steps: int, device: torch.device) -> None:
    """Time warmed-up rows together, one step of each in turn (``--interleave``, the CPU default): on a shared
    machine the load drifts over minutes, and timed one after the other the rows would each see another load.
    Sets each row's ``step_s`` (median) and the graphs compiled inside the window (any row)."""
    per_step: list[list[float]] = [[] for _ in prepared]
    graphs_before = compiled_graphs()
    for _ in range(steps):
        for times, (_, step, *_) in zip(per_step, prepared):
            sync(device)
            t = step_clock(device)
            step()
            sync(device)
            times.append(step_clock(device) - t)
    recompiled = compiled_graphs() - graphs_before
    for times, (row, *_) in zip(per_step, prepared):
        row.step_s = statistics.median(times)
        if row.mode != "eager":
            row.extra["recompiled_while_timed"] = recompiled


def compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"].get("unique_graphs", 0))


def dynamo_counters() -> dict[str, Any]:
    """Graph breaks and graphs compiled so far (torch._dynamo's own counters)."""
    from torch._dynamo.utils import counters

    breaks = {str(reason): int(n) for reason, n in counters["graph_break"].items()}
    return {"graph_breaks": sum(breaks.values()), "graph_break_reasons": breaks, **dict(counters["stats"])}


# --- Lightning ------------------------------------------------------------------------------------------
class StepClock(L.Callback):
    """Times Lightning steps from batch start to batch start (every hook, fetch and transfer included)."""

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps = warmup, steps
        self.starts: list[float] = []
        self.window_start = self.window_end = None
        self.first_start: float | None = None
        self.first_step_s: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        device = batch["image"].device
        if step == 0:
            self.first_start = time.perf_counter()
        if step == 1:
            sync(device)
            self.first_step_s = time.perf_counter() - self.first_start
        if step == self.warmup:
            sync(device)
            self.window_start = time.perf_counter()
        if self.warmup <= step <= self.warmup + self.steps:
            self.starts.append(step_clock(device))
        if step == self.warmup + self.steps:
            sync(device)
            self.window_end = time.perf_counter()

    def step_s(self, device: torch.device) -> float:
        if self.window_start is None or self.window_end is None:
            raise RuntimeError("the Lightning run ended before the timed window closed")
        if device.type == "cuda":
            return (self.window_end - self.window_start) / self.steps
        return statistics.median(b - a for a, b in zip(self.starts, self.starts[1:]))


# Callbacks that evaluate on their own data every N steps (not per-step loop work; they need the real dataset).
NEEDS_DATASET = {"OnlineProbe"}


def build_callbacks(config: dict[str, Any]) -> tuple[list[L.Callback], list[str]]:
    """The config's trainer callbacks (from class_path / init_args) but those in NEEDS_DATASET; and their names."""

    callbacks, names = [], []
    for spec in config.get("trainer", {}).get("callbacks") or []:
        module_name, _, cls_name = spec["class_path"].rpartition(".")
        if cls_name in NEEDS_DATASET:
            continue
        cls = getattr(importlib.import_module(module_name), cls_name)
        callbacks.append(cls(**(spec.get("init_args") or {})))
        names.append(cls_name)
    return callbacks, names


def lightning_run(
    module: PretrainModule,
    batches: list[dict],
    config: dict,
    args: argparse.Namespace,
    device: torch.device,
    extra_callbacks: list[L.Callback] = (),
) -> tuple[float, float, dict]:
    trainer_cfg = config.get("trainer", {})
    clock = StepClock(args.warmup, args.steps)
    progress_bar = trainer_cfg.get("enable_progress_bar", True) if args.progress_bar is None else args.progress_bar
    settings = {
        "precision": "bf16-mixed" if args.bf16 else "32-true",
        "log_every_n_steps": args.log_every or trainer_cfg.get("log_every_n_steps", 50),
        "gradient_clip_val": trainer_cfg.get("gradient_clip_val"),
        "enable_progress_bar": progress_bar,
    }
    callbacks, callback_names = build_callbacks(config)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            accelerator=device.type,
            devices=1,
            max_steps=args.warmup + args.steps + 1,  # one more: the window closes at the start of the last
            limit_val_batches=0,
            num_sanity_val_steps=0,
            enable_checkpointing=False,
            enable_model_summary=False,
            logger=L.pytorch.loggers.TensorBoardLogger(tmp, name="", version="tb", default_hp_metric=False),
            callbacks=[*callbacks, *extra_callbacks, clock],
            default_root_dir=tmp,
            **settings,
        )
        # the progress bar writes to stdout: keep stdout for the table and the JSON lines
        with contextlib.redirect_stdout(sys.stderr):
            trainer.fit(module, datamodule=PremadeBatches(batches, args.warmup + args.steps + 1))
    return clock.step_s(device), clock.first_step_s or float("nan"), {**settings, "callbacks": callback_names}


# --- host-device sync finder (CUDA) ----------------------------------------------------------------------
@contextlib.contextmanager
def record_syncs(sink: dict[str, int]):
    """Count CUDA host-device synchronisations by the innermost project/Lightning source line causing them."""
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return original(message, category, filename, lineno, file, line)
        frames = [f for f in traceback.extract_stack()[:-1] if "/warnings.py" not in f.filename]
        ours = [f for f in frames if "/pacofr/" in f.filename or "/lightning/" in f.filename or "bench/" in f.filename]
        where = ours[-1] if ours else frames[-1]
        key = f"{where.filename.split('site-packages/')[-1]}:{where.lineno} ({where.line})"
        sink[key] = sink.get(key, 0) + 1

    warnings.showwarning = show
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = show
            yield sink
    finally:
        torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning = original


# --- the project's sync sentinel (pacofr.training.sync_sentinel) -------------------------------------------
SYNC_SENTINEL_MODULE = "pacofr.training.sync_sentinel"


def sync_sentinel_listing(step: Callable[[], None], device: torch.device) -> dict[str, Any]:
    """The project's host-sync sentinel (``pacofr.training.sync_sentinel.SyncSentinel``) over one bare step
    (``--sync-debug``): what in the step would stall a GPU (reads of device values, value-dependent shapes, tensors
    built from Python data, host-to-device copies), counted by source line.

    ``record_syncs`` above is CUDA's own sync debug mode (CUDA only, and blind to copies from pageable memory that
    do not wait); the sentinel is the library's check, the one its tests run on CPU, so the GPU check lists both
    for the same step. Reports ``{"status": "missing"}`` where the module is absent, so a listing never reads as
    "no syncs" when it was not taken."""
    try:
        module = importlib.import_module(SYNC_SENTINEL_MODULE)
    except ModuleNotFoundError:
        return {"status": "missing", "module": SYNC_SENTINEL_MODULE}
    if not hasattr(module, "SyncSentinel"):
        return {"status": "no SyncSentinel in the module", "module": SYNC_SENTINEL_MODULE}
    sentinel = module.SyncSentinel()
    with sentinel.watch("train", 0):
        step()
    sync(device)
    kinds = getattr(module, "CHECKED_KINDS", None)
    counts: dict[str, int] = {}
    for event in sentinel.events:
        if kinds is None or event.kind in kinds:
            key = f"{event.kind} {event.where} ({event.op})"
            counts[key] = counts.get(key, 0) + 1
    return {"status": "ok", "events": counts}


class SyncProbe(L.Callback):
    """Records the host-device syncs of one Lightning step (the one after warm-up), hooks included."""

    def __init__(self, step: int, sink: dict[str, int]):
        self.step, self.sink, self.ctx = step, sink, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # from the start of one step to the start of the next: every hook of the step is inside
        if trainer.global_step == self.step and batch["image"].is_cuda:
            self.ctx = record_syncs(self.sink)
            self.ctx.__enter__()
        elif trainer.global_step == self.step + 1 and self.ctx is not None:
            self.ctx.__exit__(None, None, None)
            self.ctx = None


# --- largest batch (CUDA) ----------------------------------------------------------------------------------
def find_max_batch(
    make_module: Callable[[], PretrainModule], start: int, limit: int, device: torch.device, autocast, clip
) -> dict:
    """Doubling then bisection over the batch size; a batch fits when two eager steps run without OOM."""
    module = make_module().to(device).train()

    def fits(batch: int) -> bool:
        batches = None
        try:
            batches = synthetic_batches(module.objective, batch, 1, seed=batch, device=device)
            step, optimizer = bare_step_fn(module, batches, autocast, clip, 10)
            step()
            step()
            sync(device)
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            module.zero_grad(set_to_none=True)
            del batches
            gc.collect()
            torch.cuda.empty_cache()

    lo, hi = 0, None
    b = start
    while b <= limit:
        if fits(b):
            lo, b = b, b * 2
        else:
            hi = b
            break
    if hi is None:
        return {"max_batch": lo, "limited_by": f"--max-batch-limit {limit}"}
    resolution = max(8, lo // 32)
    while hi - lo > resolution:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return {"max_batch": lo, "first_oom": hi, "resolution": resolution}


# --- main ---------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mae-mask-ratio", type=float, default=0.75, help="the MAE row's mask ratio (MAE's 0.75)")
    p.add_argument("--size", choices=["tiny", "small", "base", "large", "huge"], default="base" if cuda else "tiny")
    p.add_argument(
        "--config",
        type=Path,
        nargs="+",
        default=None,
        help="pretrain config files, composed in order as `pacofr fit --config A --config B` (default: the demo's "
        "for tiny, else vit_b16.yaml + method/pacofr.yaml)",
    )
    p.add_argument("--img-size", type=int, default=None, help="default: the config's data.image_size")
    p.add_argument("--decoder-depth", type=int, default=None)
    p.add_argument("--decoder-dim", type=int, default=None)
    p.add_argument("--batch", type=int, default=None, help="default: the config's data.batch_size")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20 CUDA, 8 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 CUDA, 2 CPU)")
    p.add_argument("--compile-warmup", type=int, default=3, help="extra untimed steps for compiled rows")
    p.add_argument("--peak", type=float, default=None, help="dense bf16 TFLOP/s for MFU (default 790 on CUDA)")
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="eager rows only")
    p.add_argument(
        "--compile-model-only",
        action="store_true",
        help="add rows with only the model forward compiled, the losses eager (its earlier compile)",
    )
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (aot_eager: quick CPU check)")
    p.add_argument("--no-lightning", dest="lightning", action="store_false", help="skip the Trainer.fit row")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute blocks in backward (all rows)")
    p.add_argument("--progress-bar", dest="progress_bar", action="store_true", default=None)
    p.add_argument("--no-progress-bar", dest="progress_bar", action="store_false")
    p.add_argument("--log-every", type=int, default=None, help="Lightning log_every_n_steps (default: config's)")
    p.add_argument("--find-max-batch", action="store_true", help="CUDA: largest eager PaCo-FR batch that fits")
    p.add_argument("--max-batch-limit", type=int, default=8192)
    p.add_argument("--sync-debug", action="store_true", help="CUDA: list host-device syncs of one step per loop")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--interleave",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time the bare rows together, one step of each in turn (default: on CPU; CUDA times each row alone)",
    )
    p.add_argument(
        "--float32-matmul-precision",
        choices=PRECISIONS,
        default=None,
        help="float32 policy (TF32 or not), as `pacofr fit --float32_matmul_precision`; default: the config's",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.config = args.config or [REPO / f for f in CONFIGS["tiny" if args.size == "tiny" else "other"]]
    on_cuda = args.device.startswith("cuda")
    args.steps = args.steps or (20 if on_cuda else 8)
    args.warmup = max(1, args.warmup if args.warmup is not None else (5 if on_cuda else 2))
    args.peak = args.peak or (790.0 if on_cuda else None)
    args.bf16 = on_cuda
    args.interleave = (not on_cuda) if args.interleave is None else args.interleave
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config)
    # the numerics `pacofr fit` runs this config with (its float32_matmul_precision, through the same function),
    # not a switch of the bench's own: timing TF32 while training runs IEEE float32 would time another regime
    args.numerics = apply_numerics(args.float32_matmul_precision or config_precision(config))
    # the image size is given once, on the data side (`pacofr fit` links it to the objective's img_size)
    args.img_size = args.img_size or int(config["data"]["image_size"])
    args.batch = args.batch or int(config.get("data", {}).get("batch_size", 32))
    clip = config.get("trainer", {}).get("gradient_clip_val")

    def autocast():
        if args.bf16:
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def make_module(method: str) -> PretrainModule:
        torch.manual_seed(args.seed)
        return build_module(config, args, method)

    rows: list[Measurement] = []
    interleaved: list[tuple] = []  # (row, step, optimizer, module, batches) of rows timed together
    flops: dict[str, float] = {}
    syncs: dict[str, dict[str, int]] = {}
    sentinel: dict[str, dict[str, Any]] = {}  # the sync sentinel's listing per bare row (--sync-debug)
    kept: dict[str, Any] = {}
    modes = ["eager"] + (["compiled"] if args.compile else []) + (["compiled-model"] if args.compile_model_only else [])
    lightning_mode = "compiled" if args.compile else "eager"
    for mode in modes:
        for method in ("mae", "pacofr"):
            module = make_module(method).to(device).train()
            flops[method] = module.flops_per_image()
            batches = synthetic_batches(module.objective, args.batch, 2, seed=args.seed, device=device)
            if mode != "eager":
                if not args.interleave:
                    torch._dynamo.reset()  # fresh caches: this row compiles its own graphs
                torch._dynamo.utils.counters.clear()  # and counts only its own graph breaks
                module.hparams.compile = True
                module.compile_backend = args.compile_backend
                if mode == "compiled":
                    module.configure_model()  # the library's compile (compile: true): forward + losses, one graph
                else:
                    module.objective.compile_forward_only(args.compile_backend)  # the losses eager around it
            base_mem = memory_reset(device)
            step, optimizer = bare_step_fn(module, batches, autocast, clip, args.warmup + args.steps)
            warmup = args.warmup + (args.compile_warmup if mode != "eager" else 0)
            graphs = []  # graphs compiled before / after the timed window: a recompile inside it skews the row
            timed = 0 if args.interleave else args.steps  # interleaved rows are timed together below
            step_s, first = time_loop(step, warmup, timed, device, lambda g=graphs: g.append(compiled_graphs()))
            peak = memory_peak(device)
            static = memory_now(device)  # parameters, optimizer state, batches (grads are None here)
            label = f"{method} {mode}"
            row = Measurement(label, method, mode, "bare", args.batch, step_s, first, peak, static)
            if device.type != "cuda" and base_mem is not None and peak is not None:
                row.peak_mem_bytes, row.static_mem_bytes = peak - base_mem, None  # RSS growth over the run
            if mode != "eager":
                row.extra.update(dynamo_counters(), recompiled_while_timed=graphs[-1] - graphs[0])
            rows.append(row)
            if args.sync_debug and device.type == "cuda":
                with record_syncs(syncs.setdefault(f"bare {label}", {})):
                    step()
                    sync(device)
            if args.sync_debug:
                sentinel[f"bare {label}"] = sync_sentinel_listing(step, device)
            if args.interleave:
                interleaved.append((row, step, optimizer, module, batches))
                continue
            del optimizer, step
            if method == "pacofr" and mode == lightning_mode:
                kept.update(module=module, batches=batches)  # the Lightning row reuses it (no second compile)
            else:
                del module, batches
            gc.collect()

    if interleaved:
        time_interleaved(interleaved, args.steps, device)
        for row, _, _, module, batches in interleaved:
            if row.method == "pacofr" and row.mode == lightning_mode:
                kept.update(module=module, batches=batches)
        interleaved.clear()
        gc.collect()

    if args.lightning:
        module, batches = kept["module"], kept["batches"]
        memory_reset(device)
        on_cuda = device.type == "cuda"  # CUDA's sync debug mode: a CPU run lists nothing (rather than "none")
        probes = (
            [SyncProbe(args.warmup, syncs.setdefault("lightning pacofr", {}))] if args.sync_debug and on_cuda else []
        )
        graphs_before = compiled_graphs()
        step_s, first, settings = lightning_run(module, batches, config, args, device, probes)
        label = f"pacofr {lightning_mode} (Trainer.fit)"
        row = Measurement(label, "pacofr", lightning_mode, "lightning", args.batch, step_s, first, memory_peak(device))
        if device.type != "cuda":
            row.peak_mem_bytes = None  # the RSS mark is not reset inside fit; memory is the bare rows' business
        row.extra.update(settings)
        if lightning_mode != "eager":  # the trainer's step counter must not reach a guard of the compiled step
            row.extra["recompiled_in_fit"] = compiled_graphs() - graphs_before
        rows.append(row)
        del module, batches, kept
        gc.collect()

    max_batch = None
    if args.find_max_batch:
        if device.type != "cuda":
            print("--find-max-batch needs CUDA; skipped", file=sys.stderr)
        else:
            max_batch = find_max_batch(
                lambda: make_module("pacofr"), args.batch, args.max_batch_limit, device, autocast, clip
            )
    report(rows, flops, args, device, clip, syncs, max_batch, sentinel)


def report(rows, flops, args, device, clip, syncs, max_batch, sentinel=None) -> None:
    env = environment(device_name(device))
    records = []
    for r in rows:
        ips = r.batch / r.step_s
        tflops = ips * flops[r.method] / 1e12
        rec = {
            "bench": "train_step",
            "row": r.label,
            "method": r.method,
            "mode": r.mode,
            "compiled": r.mode != "eager",
            "loop": r.loop,
            "size": args.size,
            "img_size": args.img_size,
            "batch": r.batch,
            "steps": args.steps,
            "grad_checkpointing": args.grad_checkpointing,
            "precision": "bf16-autocast" if args.bf16 else "fp32",
            "float32_matmul_precision": args.numerics["float32_matmul_precision"],
            "img_per_s": round(ips, 2),
            "step_ms": round(1000 * r.step_s, 3),
            "first_step_s": round(r.first_step_s, 2),
            "gflop_per_img": round(flops[r.method] / 1e9, 4),
            "tflops": round(tflops, 4),
            "mfu": round(tflops / args.peak, 4) if args.peak else None,
            "peak_mem_gib": round(r.peak_mem_bytes / 2**30, 3) if r.peak_mem_bytes is not None else None,
            "mem_kind": "max_memory_allocated" if device.type == "cuda" else "RSS growth",
        }
        if r.peak_mem_bytes is not None:
            activations = r.peak_mem_bytes - (r.static_mem_bytes or 0)
            rec["mem_per_img_mib"] = round(activations / r.batch / 2**20, 3)
        rec.update(r.extra)
        records.append(rec)

    def find(method: str, mode: str, loop: str = "bare") -> dict | None:
        for rec in records:
            if rec["method"] == method and rec["mode"] == mode and rec["loop"] == loop:
                return rec
        return None

    summary: dict[str, Any] = {"bench": "train_step_summary", "size": args.size, "batch": args.batch}
    for mode in ("eager", "compiled", "compiled-model"):
        mae, paco = find("mae", mode), find("pacofr", mode)
        if mae and paco:
            summary[f"pacofr_over_mae_{mode}"] = round(paco["img_per_s"] / mae["img_per_s"], 4)
    lightning_mode = "compiled" if args.compile else "eager"
    light = find("pacofr", lightning_mode, "lightning")
    bare = find("pacofr", lightning_mode)
    if light and bare:
        summary["lightning_overhead_pct"] = round(100 * (light["step_ms"] / bare["step_ms"] - 1), 2)
    best = find("pacofr", lightning_mode)
    if best and best["mfu"] is not None:
        summary["pacofr_mfu"] = best["mfu"]
    summary["goals"] = GOALS
    if syncs:
        summary["host_device_syncs_per_step"] = syncs
    if sentinel:
        summary["sync_sentinel"] = sentinel
    if max_batch:
        summary["find_max_batch"] = max_batch
    summary["gradient_clip_val"] = clip
    summary["numerics"] = args.numerics
    summary["config"] = [
        str(c.resolve().relative_to(REPO) if c.resolve().is_relative_to(REPO) else c) for c in args.config
    ]
    summary["command"] = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    summary["env"] = env

    print(f"\n## Training step: {args.size}, {args.img_size}px, batch {args.batch}, {env['device']}\n")
    columns = [
        ("row", "step"),
        ("img_per_s", "img/s"),
        ("step_ms", "step ms"),
        ("gflop_per_img", "GFLOP/img"),
        ("tflops", "TFLOP/s"),
        ("mfu", f"MFU@{args.peak:g}" if args.peak else "MFU"),
        ("peak_mem_gib", "peak GiB"),
        ("mem_per_img_mib", "MiB/img"),
        ("first_step_s", "1st step s"),
    ]
    print(markdown_table(records, columns))
    print()
    keys = ["pacofr_over_mae_eager", "pacofr_over_mae_compiled", "pacofr_over_mae_compiled-model"]
    for key in [*keys, "lightning_overhead_pct", "pacofr_mfu"]:
        if key in summary:
            print(f"- {key}: {summary[key]}")
    if max_batch:
        print(f"- largest PaCo-FR batch (eager): {max_batch}")
    print(f"- float32 numerics: {args.numerics}")
    for where, found in syncs.items() if device.type == "cuda" else ():  # torch's sync debug mode is CUDA's
        print(f"- host-device syncs, {where}: {found or 'none'}")
    for where, listing in (sentinel or {}).items():
        found = listing.get("events", listing) if listing.get("status") == "ok" else listing
        print(f"- sync sentinel ({SYNC_SENTINEL_MODULE}), {where}: {found or 'none'}")
    print()
    for rec in records:
        emit_json(rec)
    emit_json(summary)


if __name__ == "__main__":
    main()
