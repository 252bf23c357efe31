"""The Python half of ``bench/gpu_check.sh``: the steps' small checks and the summary line of each step.

    python3 bench/gpu_check.py env                      # environment facts: one JSON line
    python3 bench/gpu_check.py numerics [--device cuda] # the codebook's distances under highest vs high (TF32)
    python3 bench/gpu_check.py nvjpeg [--device cuda]   # the nvJPEG ordering check of pacofr.data.device_images
    python3 bench/gpu_check.py runcheck RUN_DIR --expect-step N [--expect-starts K] [--sharded]
    python3 bench/gpu_check.py summarize --step NAME --rc RC --seconds S --log FILE [--status TEXT]

Each check prints one ``{"gpu_check": NAME, ...}`` JSON line (its key figures) and exits 0 when it passed, 1 when
it did not; ``summarize`` folds the step's log (those lines, and the benchmark scripts' summary lines) into the
step's one line for ``summary.jsonl``. ``summarize`` imports nothing heavy: it must work whatever broke.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for path in (REPO / "src", REPO):  # pacofr without an installed package (the GPU machine has none)
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

# The packages pacofr needs that the GPU image lacks (bench/RESULTS.md, "GPU check"): carried as wheels.
CARRIED = ("jsonargparse", "docstring-parser", "typeshed-client", "webdataset", "braceexpand", "simplejpeg")
# The nvJPEG ordering check: a function of pacofr.data.device_images (nvjpeg_ordering_check; another name can be
# given as module:function in PACOFR_NVJPEG_CHECK). Where none is found the step reports "missing", not a failure.
NVJPEG_MODULE = "pacofr.data.device_images"
NVJPEG_FUNCTION = "nvjpeg_ordering_check"


def emit(name: str, **figures: Any) -> None:
    print(json.dumps({"gpu_check": name, **figures}, default=str), flush=True)


# --- env ---------------------------------------------------------------------------------------------------
def package_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cmd_env(args: argparse.Namespace) -> int:
    """torch, CUDA, cuDNN, the GPU and its driver, and the versions of what pacofr imports."""
    import torch

    facts: dict[str, Any] = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(
            gpu=props.name,
            gpu_count=torch.cuda.device_count(),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            bf16=torch.cuda.is_bf16_supported(),
        )
    if shutil.which("nvidia-smi"):
        query = "--query-gpu=name,driver_version,memory.total,clocks.max.sm"
        out = subprocess.run(["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True)
        facts["nvidia_smi"] = out.stdout.strip() or out.stderr.strip()
    else:
        facts["nvidia_smi"] = None
    names = (
        "torchvision",
        "lightning",
        "timm",
        "torchmetrics",
        "tensorboard",
        "einops",
        "numpy",
        "opencv-python-headless",
    )
    facts["packages"] = package_versions(names + CARRIED)
    missing = [n for n in CARRIED if facts["packages"][n] is None]
    facts["missing_packages"] = missing
    emit("env", **facts)
    return 0


# --- numerics: what TF32 does to the codebook's float32 distances --------------------------------------------
def tf32_inputs(t: Any) -> Any:
    """``t`` (float32) rounded to TF32's 10 mantissa bits (to nearest): what a TF32 matmul multiplies."""
    import torch

    bits = t.contiguous().view(torch.int32)
    return ((bits + 0x1000) & -0x2000).view(torch.float32)  # drop the low 13 of 23 mantissa bits, rounded


def cmd_numerics(args: argparse.Namespace) -> int:
    """The codebook's distances (``squared_distances``, float32 on purpose: the nearest code is an argmin) at the
    ViT-B/16 PaCo-FR shape: their time under ``highest`` and ``high`` (TF32), and how many nearest-code choices
    TF32 changes, measured on CUDA and emulated anywhere (inputs rounded to TF32, the products in float32).

    Synthetic but crowded like a trained codebook: codes in clusters of 16 a few per cent apart, patches near a
    cluster, so the nearest and second-nearest codes are close, which is where rounding decides."""
    import torch

    from pacofr.models.codebook import squared_distances
    from pacofr.training.numerics import apply_numerics

    device = torch.device(args.device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    rows, dim, codes, per = args.rows, args.dim, args.codes, 16
    centres = torch.randn(codes // per, dim, generator=gen)
    prototypes = centres.repeat_interleave(per, 0) + args.spread * torch.randn(codes, dim, generator=gen)
    patches = centres[torch.randint(codes // per, (rows,), generator=gen)] + 0.5 * torch.randn(rows, dim, generator=gen)
    patches, prototypes = patches.to(device), prototypes.to(device)

    def timed(precision: str) -> tuple[torch.Tensor, float]:
        apply_numerics(precision)
        out = squared_distances(patches, prototypes)  # warm-up (and the library's choice of kernel)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.repeats):
            out = squared_distances(patches, prototypes)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out, (time.perf_counter() - start) / args.repeats

    def changed(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
        top_a = torch.topk(-a, 4, dim=-1).indices.sort(-1).values
        top_b = torch.topk(-b, 4, dim=-1).indices.sort(-1).values
        return {
            "argmin": round((a.argmin(-1) != b.argmin(-1)).float().mean().item(), 5),
            "top4_set": round((top_a != top_b).any(-1).float().mean().item(), 5),
        }

    try:
        exact, exact_s = timed("highest")
        emulated = (
            (patches * patches).sum(-1, keepdim=True)
            - 2.0 * (tf32_inputs(patches) @ tf32_inputs(prototypes).t())
            + (prototypes * prototypes).sum(-1)
        )
        tf32, tf32_s = timed("high")
    finally:
        apply_numerics(None)  # leave the default policy behind
    gflop = 2 * rows * dim * codes / 1e9
    emit(
        "numerics",
        device=str(device),
        shape=f"{rows}x{dim} @ {dim}x{codes}",
        highest_ms=round(1000 * exact_s, 3),
        high_ms=round(1000 * tf32_s, 3),
        highest_tflops=round(gflop / exact_s / 1000, 2),
        high_tflops=round(gflop / tf32_s / 1000, 2),
        changed_by_high=changed(exact, tf32),  # on a CPU "high" is float32 still (no TF32 units): 0
        changed_by_emulated_tf32=changed(exact, emulated),
        nearest_gap_median=round(torch.topk(-exact, 2, dim=-1).values.diff(dim=-1).abs().median().item(), 4),
        max_abs_distance_diff_emulated=round(float((exact - emulated).abs().max()), 4),
    )
    return 0


# --- nvJPEG ordering check ----------------------------------------------------------------------------------
CHECK_NAME = re.compile(r"(check|verify)\w*(order|nvjpeg)|(order|nvjpeg)\w*check", re.I)


def find_nvjpeg_check() -> tuple[Any, str] | tuple[None, str]:
    """The check function (``PACOFR_NVJPEG_CHECK=module:function``, else ``nvjpeg_ordering_check`` or the one
    function of the module named like ``check_..._order``), and where it was found or why none was."""
    spec = os.environ.get("PACOFR_NVJPEG_CHECK")
    if spec:
        module_name, _, name = spec.partition(":")
        fn = getattr(importlib.import_module(module_name), name, None)
        return (fn, spec) if callable(fn) else (None, f"missing: {spec} not found")
    module = importlib.import_module(NVJPEG_MODULE)
    if callable(getattr(module, NVJPEG_FUNCTION, None)):
        return getattr(module, NVJPEG_FUNCTION), f"{NVJPEG_MODULE}:{NVJPEG_FUNCTION}"
    found = [
        (name, fn)
        for name, fn in vars(module).items()
        if inspect.isfunction(fn) and fn.__module__ == NVJPEG_MODULE and CHECK_NAME.search(name)
    ]
    if len(found) == 1:
        return found[0][1], f"{NVJPEG_MODULE}:{found[0][0]}"
    named = ", ".join(n for n, _ in found)
    return None, f"missing: no single check_*order* function in {NVJPEG_MODULE}" + (f" ({named})" if named else "")


def cmd_nvjpeg(args: argparse.Namespace) -> int:
    """The device path's decode against the training stream (``nvjpeg_ordering_check``: write-after-read and
    read-after-write hazards of torchvision's CUDA decode, with the training stream kept busy)."""
    import torch

    fn, where = find_nvjpeg_check()
    if fn is None:
        emit("nvjpeg", status=where)  # reported, not failed: the check belongs to another change
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        emit("nvjpeg", status="skipped: no CUDA", function=where)
        return 0
    params = inspect.signature(fn).parameters
    result = fn(device=args.device) if "device" in params else fn()
    ok = result.get("ok") if isinstance(result, dict) else result
    if ok is None:
        status = f"skipped: {result.get('skipped', 'the check ran nothing')}" if isinstance(result, dict) else "?"
    else:
        status = "ok" if ok else "failed"
    emit("nvjpeg", status=status, function=where, result=result)
    return 1 if status == "failed" else 0


# --- runcheck: what a pacofr fit left in its run folder --------------------------------------------------------
def scalars(tb_dir: Path, tags: tuple[str, ...]) -> dict[str, Any]:
    """The last value (and its step) of each TensorBoard scalar of the run that has one (images/s, MFU, losses)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return {}
    found: dict[str, Any] = {}
    for events_dir in sorted({p.parent for p in tb_dir.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(events_dir), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in tags:
            if tag in acc.Tags().get("scalars", []):
                last = acc.Scalars(tag)[-1]
                found[tag] = {"value": round(last.value, 4), "step": last.step}
    return found


def cmd_runcheck(args: argparse.Namespace) -> int:
    from pacofr.checkpointing.resolve import checkpoint_global_step, find_checkpoints

    run_dir = Path(args.run_dir)
    found, problems = find_checkpoints(run_dir / "checkpoints")
    last = run_dir / "checkpoints" / "last.ckpt"
    info_path = run_dir / "run_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    config_path = run_dir / "config.yaml"
    precision = None
    if config_path.exists():
        match = re.search(r"^float32_matmul_precision:\s*(\S+)", config_path.read_text(), re.M)
        precision = match.group(1) if match else None
    figures: dict[str, Any] = {
        "run_dir": str(run_dir),
        "checkpoints": [f"{c.path.name}@{c.global_step}" for c in found],
        "unreadable": [str(p) for p in problems],
        "last_step": checkpoint_global_step(last) if last.exists() else None,
        "last_sharded": last.is_dir(),
        "starts": len(info.get("starts", [])),
        "float32_matmul_precision": precision,
    }
    if args.log:
        text = Path(args.log).read_text(errors="replace")
        restored = re.findall(r"Restoring states from the checkpoint path at (\S+)", text)
        figures["restored_from"] = restored[-1] if restored else None
    figures.update(scalars(run_dir / "tb", ("perf/images_per_s", "perf/mfu", "loss/total", "val/loss")))
    problems_found = []
    if figures["last_step"] != args.expect_step:
        problems_found.append(f"last.ckpt at step {figures['last_step']}, expected {args.expect_step}")
    if args.expect_starts is not None and figures["starts"] != args.expect_starts:
        problems_found.append(f"{figures['starts']} starts in run_info.json, expected {args.expect_starts}")
    if args.expect_starts and args.expect_starts > 1 and args.log and not figures.get("restored_from"):
        problems_found.append("the log names no checkpoint it restored from")
    if args.sharded and not figures["last_sharded"]:
        problems_found.append("last.ckpt is a file, expected a sharded folder")
    emit("runcheck", ok=not problems_found, problems=problems_found, **figures)
    return 0 if not problems_found else 1


# --- summarize: one line per step ----------------------------------------------------------------------------
def bench_figures(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The key figures of bench/train_step.py, bench/data.py and bench/fsdp_compare.py from their JSON lines."""
    figures: dict[str, Any] = {}
    rows = [r for r in records if r.get("bench") == "train_step"]
    if rows:
        figures["img_per_s"] = {r["row"]: r["img_per_s"] for r in rows}
        figures["mfu"] = {r["row"]: r["mfu"] for r in rows if r.get("mfu") is not None}
        figures["peak_mem_gib"] = {r["row"]: r["peak_mem_gib"] for r in rows}
        figures["graph_breaks"] = {r["row"]: r["graph_breaks"] for r in rows if "graph_breaks" in r}
    for summary in (r for r in records if r.get("bench") == "train_step_summary"):
        keep = ("pacofr_over_mae_eager", "pacofr_over_mae_compiled", "lightning_overhead_pct", "pacofr_mfu")
        figures.update({k: summary[k] for k in keep if k in summary})
        syncs = summary.get("host_device_syncs_per_step")
        if syncs is not None:
            figures["syncs_per_step"] = {where: sum(found.values()) for where, found in syncs.items()}
            figures["sync_lines"] = {where: sorted(found) for where, found in syncs.items() if found}
        sentinel = summary.get("sync_sentinel")
        if sentinel:
            figures["sync_sentinel"] = {
                where: listing.get("events", {}) if listing.get("status") == "ok" else listing.get("status")
                for where, listing in sentinel.items()
            }
        figures["numerics"] = summary.get("numerics")
    for summary in (r for r in records if r.get("bench") == "data_summary"):
        keep = ("pipeline_img_per_cpu_s", "cores_per_gpu", "cores_per_gpu_device_path", "device_path_host_ms_per_img")
        figures.update({k: summary[k] for k in keep if k in summary})
    device_rows = [r for r in records if r.get("bench") == "data" and str(r.get("row", "")).startswith("device")]
    for row in device_rows:
        figures[row["row"]] = {"img_per_s_wall": row.get("img_per_s_wall"), "ms_per_img_cpu": row.get("ms_per_img_cpu")}
    keep = ("ok", "step_s", "state_bytes_per_rank", "peak_bytes_per_rank", "checkpoint_bytes", "save_s", "error")
    strategies = {r["strategy"]: {k: r[k] for k in keep if k in r} for r in records if r.get("bench") == "fsdp_compare"}
    if strategies:
        figures["fsdp_compare"] = strategies
    return figures


def cmd_summarize(args: argparse.Namespace) -> int:
    records: list[dict[str, Any]] = []
    log = Path(args.log) if args.log else None
    if log is not None and log.exists():
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    records.append(json.loads(line))
    status = args.status or ("ok" if args.rc == 0 else "timeout" if args.rc in (124, 137) else "failed")
    line: dict[str, Any] = {"step": args.step, "rc": args.rc, "seconds": round(args.seconds, 1), "status": status}
    for record in records:
        if "gpu_check" in record:
            name = record.pop("gpu_check")
            if name == "env" or name == args.step:
                line.update(record)
            else:
                line[name] = record
    line.update(bench_figures(records))
    if args.rc != 0 and log is not None and log.exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        line["log_tail"] = [t[-300:] for t in tail]
    text = json.dumps(line, default=str)
    print(text, flush=True)
    if args.summary:
        with open(args.summary, "a") as fh:
            fh.write(text + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("env")
    n = sub.add_parser("numerics")
    n.add_argument("--device", default="cuda")
    n.add_argument("--rows", type=int, default=256 * 196, help="patches (default: batch 256 x 196 at ViT-B/16)")
    n.add_argument("--dim", type=int, default=768, help="patch width (16 x 16 x 3)")
    n.add_argument("--codes", type=int, default=1024, help="codebook size K")
    n.add_argument("--spread", type=float, default=0.05, help="codes' distance from their cluster's centre")
    n.add_argument("--repeats", type=int, default=10)
    j = sub.add_parser("nvjpeg")
    j.add_argument("--device", default="cuda")
    r = sub.add_parser("runcheck")
    r.add_argument("run_dir")
    r.add_argument("--expect-step", type=int, required=True)
    r.add_argument("--expect-starts", type=int, default=None)
    r.add_argument("--sharded", action="store_true")
    r.add_argument("--log", default=None, help="the fit's log: which checkpoint it restored from")
    s = sub.add_parser("summarize")
    s.add_argument("--step", required=True)
    s.add_argument("--rc", type=int, required=True)
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--log", default=None)
    s.add_argument("--status", default=None, help="e.g. 'skipped: no CUDA' (default: from rc)")
    s.add_argument("--summary", default=None, help="append the line to this file too")
    args = p.parse_args(argv)
    commands = {
        "env": cmd_env,
        "numerics": cmd_numerics,
        "nvjpeg": cmd_nvjpeg,
        "runcheck": cmd_runcheck,
        "summarize": cmd_summarize,
    }
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
