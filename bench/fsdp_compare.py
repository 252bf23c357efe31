"""DDP, FSDP1 and FSDP2 on the same run, measured in one invocation: step time, memory per rank, checkpoint size and
time (docs/scaling.md, "FSDP2").

    .venv/bin/python bench/fsdp_compare.py                      # CPU: 2 processes over gloo, ViT-Ti, ~5 min
    .venv/bin/python bench/fsdp_compare.py --accelerator gpu --devices 1 --size vit_b16 --steps 30   # a GPU node

Every strategy runs ``pacofr fit`` on the same config (the size file, the method file, synthetic faces written once)
for ``--steps`` optimiser steps; only ``--config configs/trainer/<preset>.yaml`` differs (``ddp`` is Lightning's
DDP). A callback in every rank (:class:`Recorder`) records:

- **step time**: wall time between consecutive ``on_train_batch_end`` (median over the steps after the first
  ``--warmup``), the slowest rank's;
- **state per rank**: bytes of parameters and AdamW moments this rank holds (an FSDP2 DTensor's local shard, FSDP1's
  flat-parameter shard, DDP's whole copy): what sharding saves, independent of the allocator;
- **peak memory per rank**: ``torch.cuda.max_memory_allocated`` on a GPU; on CPU the process's peak RSS (which also
  holds Python, torch's libraries and the data pipeline: a ceiling, not the model's share);
- **checkpoint**: ``trainer.save_checkpoint`` of the full training state at the end, timed (slowest rank), and its
  size on disk (a folder of shards for the sharded presets, one file for DDP).

Prints a markdown table with ratios against DDP measured in the same run, and one JSON line per strategy. On a
shared CPU the step times are noisy; the state bytes and checkpoint sizes are exact.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L

REPO = Path(__file__).resolve().parents[1]
PRESETS = {
    "ddp": (),
    "fsdp1": ("configs/trainer/fsdp1_cpu.yaml",),
    "fsdp2": ("configs/trainer/fsdp_cpu.yaml",),
}
GPU_PRESETS = {"ddp": (), "fsdp1": ("configs/trainer/fsdp1.yaml",), "fsdp2": ("configs/trainer/fsdp.yaml",)}
SIZES = {"tiny": "configs/pretrain/tiny.yaml", "vit_b16": "configs/pretrain/vit_b16.yaml"}


def local_bytes(tensor: Any) -> int:
    from torch.distributed.tensor import DTensor

    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.numel() * local.element_size()


class Recorder(L.Callback):
    """Step times, state bytes, peak memory and a timed checkpoint of this rank, written to ``out`` as JSON."""

    def __init__(self, out: str, warmup: int = 3):
        self.out, self.warmup = out, warmup
        self.times: list[float] = []
        self._last: float | None = None

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.times.append(now - self._last)
        self._last = now

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import torch

        params = sum(local_bytes(p) for p in pl_module.parameters())
        moments = sum(
            local_bytes(v)
            for opt in trainer.optimizers
            for state in opt.state.values()
            for v in state.values()
            if torch.is_tensor(v) and v.dim() > 0
        )
        path = Path(self.out).with_name(f"final_{Path(self.out).stem}.ckpt")
        trainer.strategy.barrier()
        started = time.perf_counter()
        trainer.save_checkpoint(str(path))
        trainer.strategy.barrier()
        save_s = time.perf_counter() - started
        cuda = torch.cuda.is_available() and pl_module.device.type == "cuda"
        peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        steady = self.times[self.warmup :] or self.times
        record = {
            "rank": trainer.global_rank,
            "step_s": statistics.median(steady) if steady else None,
            "param_bytes": params,
            "moment_bytes": moments,
            "peak_bytes": peak,
            "peak_kind": "cuda_allocated" if cuda else "cpu_rss",
            "save_s": save_s,
            "checkpoint": str(path),
        }
        Path(self.out).with_name(f"{Path(self.out).stem}_rank{trainer.global_rank}.json").write_text(json.dumps(record))


def disk_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run(name: str, args: argparse.Namespace, faces: Path, work: Path) -> dict[str, Any]:
    presets = GPU_PRESETS if args.accelerator == "gpu" else PRESETS
    out = work / f"{name}.json"
    # a --work folder used before: this strategy's run, records and final checkpoint start afresh
    for old in [work / name, work / f"final_{name}.ckpt", *work.glob(f"{name}_rank*.json")]:
        shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)
    overrides = {
        "run_dir": str(work / name),
        "model": {"warmup_steps": 2},
        "data": {"root": str(faces), "image_size": args.image_size, "batch_size": args.batch_size, "num_workers": 1},
        "trainer": {
            "max_steps": args.steps, "val_check_interval": 10_000, "limit_val_batches": 0, "log_every_n_steps": 10,
            "enable_progress_bar": False, "accelerator": args.accelerator, "devices": args.devices,
            "precision": args.precision,
            "callbacks": [{"class_path": "bench.fsdp_compare.Recorder", "init_args": {"out": str(out)}}],
        },
        "checkpoint": {"every_n_train_steps": 10_000},
    }  # fmt: skip
    if args.size == "tiny":
        overrides["model"]["objective"] = {"init_args": {"incubation_steps": 2}}
    cfg = work / f"{name}.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(overrides))
    command = [sys.executable, "-m", "pacofr.cli", "fit", "--config", SIZES[args.size]]
    command += ["--config", f"configs/pretrain/method/{args.method}.yaml"]
    if args.size == "tiny" and args.method.startswith("pacofr"):
        command += ["--config", "configs/pretrain/demo.yaml"]
    command += ["--config", str(cfg)]
    for preset in presets[name]:
        command += ["--config", preset]
    # after the presets, which set their own devices and precision: every strategy runs on the same ones
    command += ["--trainer.accelerator", args.accelerator, "--trainer.devices", str(args.devices)]
    command += ["--trainer.precision", args.precision]
    if name == "ddp":
        command += ["--trainer.strategy", "ddp" if args.devices != 1 else "auto"]
    if args.size == "vit_b16":
        command += ["--model.compile", "false"]  # the same eager step for all three (FSDP refuses the whole-step one)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "src")]), PYTHONWARNINGS="ignore")
    if args.accelerator == "cpu":
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // args.devices))
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        return {"strategy": name, "ok": False, "error": tail[-1500:]}
    ranks = [json.loads(p.read_text()) for p in sorted(work.glob(f"{name}_rank*.json"))]
    ckpt = Path(ranks[0]["checkpoint"])
    return {
        "strategy": name,
        "ok": True,
        "ranks": len(ranks),
        "step_s": max(r["step_s"] for r in ranks),
        "state_bytes_per_rank": max(r["param_bytes"] + r["moment_bytes"] for r in ranks),
        "peak_bytes_per_rank": max(r["peak_bytes"] for r in ranks),
        "peak_kind": ranks[0]["peak_kind"],
        "save_s": max(r["save_s"] for r in ranks),
        "checkpoint_bytes": disk_bytes(ckpt),
        "checkpoint_kind": "folder" if ckpt.is_dir() else "file",
        "wall_s": wall,
    }


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--accelerator", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--size", default="tiny", choices=sorted(SIZES))
    p.add_argument("--method", default="pacofr")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--precision", default=None, help="default: 32-true on CPU, bf16-mixed on GPU")
    p.add_argument("--strategies", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--timeout", type=int, default=1800)
    p.add_argument("--work", default=None, help="folder for the data and runs (default: a temporary one)")
    p.add_argument("--faces", default=None, help="a dataset to train on (default: synthetic faces made in --work)")
    args = p.parse_args()
    args.precision = args.precision or ("bf16-mixed" if args.accelerator == "gpu" else "32-true")
    sys.path[:0] = [str(REPO), str(REPO / "src")]
    from data_prep.cli import main as prep

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        faces = Path(args.faces) if args.faces else work / "faces"
        if not (faces / "_info.json").is_file():
            n = max(256, args.batch_size * args.devices * (args.steps + 4))
            size = str(max(args.image_size + 16, 128))
            prep(["synth", "--out", str(faces), "--n", str(n), "--size", size, "--seed", "0", "--val-fraction", "0.1"])
        rows = [run(name, args, faces, work) for name in args.strategies]
    base = next((r for r in rows if r["strategy"] == "ddp" and r["ok"]), None)
    print(
        f"\n{args.method} at {args.size}, {args.devices} x {args.accelerator}, {args.precision}, batch "
        f"{args.batch_size}/rank, {args.steps} steps\n"
    )
    header = ("strategy", "step (s)", "vs DDP", "state/rank (MiB)", "vs DDP", "peak/rank (MiB)", "checkpoint (MiB)")
    print("| " + " | ".join((*header, "save (s)")) + " |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if not r["ok"]:
            print(f"| {r['strategy']} | FAILED: {r['error'].splitlines()[-1][:80]} |||||||")
            continue

        def ratio(key: str, row: dict = r) -> str:
            return f"{row[key] / base[key]:.2f}x" if base else "-"

        print(
            f"| {r['strategy']} | {r['step_s']:.3f} | {ratio('step_s')} | {mib(r['state_bytes_per_rank'])} | "
            f"{ratio('state_bytes_per_rank')} | {mib(r['peak_bytes_per_rank'])} ({r['peak_kind']}) | "
            f"{mib(r['checkpoint_bytes'])} ({r['checkpoint_kind']}) | {r['save_s']:.2f} |"
        )
    for r in rows:
        print(json.dumps({"bench": "fsdp_compare", **vars(args), **r}))


if __name__ == "__main__":
    main()
