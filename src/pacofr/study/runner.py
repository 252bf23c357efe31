"""Run the cells of a study: pretrain (``pacofr fit`` in a child process, ``--resume auto``), probe the
encoder, write ``result.json``. A cell whose result carries the current cell key is skipped; an
interrupted one continues from its newest checkpoint."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from pacofr.checkpointing.preemption import EXIT_PREEMPTED, EXIT_REQUEUED
from pacofr.checkpointing.resolve import resolve_resume
from pacofr.eval.backbone import load_backbone
from pacofr.eval.feature_probe import MEASURES, measure_value, run_probe
from pacofr.models.sizes import build_encoder
from pacofr.run_folder import atomic_write_text, git_commit

from .spec import Cell, StudyConfigError, StudySpec

log = logging.getLogger("pacofr.study")
CURVE_TAGS = ("probe/pose_mae", "probe/knn_identity_acc", "loss/total", "loss/rec")


class CellError(RuntimeError):
    """A cell's pretraining failed; the message names its log."""


class CellPreempted(RuntimeError):
    """The cell's pretraining checkpointed on a preemption signal; ``exit_code`` is ``pacofr fit``'s
    (75: the job is queued again, 76: resubmit to continue)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


FORWARDED_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


def run_forwarding_signals(command: list[str], log) -> int:
    """Run ``command`` (output to ``log``) and pass SLURM's USR1 / TERM on to it, so the child ``pacofr fit``
    checkpoints and requeues at its next step instead of this process dying of the signal."""
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in FORWARDED_SIGNALS:
            previous[sig] = signal.signal(sig, lambda signum, _frame: child.send_signal(signum))
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def nested(dotted: dict[str, Any]) -> dict[str, Any]:
    """``{"model.lr": 1}`` -> ``{"model": {"lr": 1}}`` (a config file that ``pacofr fit`` merges last)."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise StudyConfigError(f"override {key!r} goes below a key that already holds a value")
        node[leaf] = value
    return out


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` merged into a copy of ``base``, nested mappings key by key (as config files merge)."""
    out = dict(base)
    for key, value in update.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def cell_config(spec: StudySpec, cell: Cell) -> dict[str, Any]:
    """The cell's pretraining config as YAML data: the base configs merged in order, then its override layers
    (what the study reads from it: the encoder's size and geometry, the steps)."""
    config: dict[str, Any] = {}
    for path in spec.base_config:
        try:
            config = deep_merge(config, yaml.safe_load(Path(path).read_text()) or {})
        except OSError as err:
            raise StudyConfigError(f"cannot read base_config {path}: {err.strerror}") from err
    for layer in spec.fit_override_layers(cell):
        config = deep_merge(config, nested(layer))
    return config


def encoder_geometry(config: dict[str, Any]) -> tuple[str, int, int]:
    """(encoder size, image size, patch size) of a pretraining config (the objective's size, the data's sides)."""
    objective = ((config.get("model") or {}).get("objective") or {}).get("init_args") or {}
    data = config.get("data") or {}
    masker = (data.get("masker") or {}).get("init_args") or {}
    return (
        str(objective.get("encoder_size", "base")),
        int(data.get("image_size", 224)),
        int(masker.get("patch_size", 16)),
    )


def max_steps(config: dict[str, Any]) -> int:
    steps = (config.get("trainer") or {}).get("max_steps")
    if not isinstance(steps, int) or steps < 1:
        raise StudyConfigError("the study needs trainer.max_steps (in common or in the base config)")
    return steps


def fit_command(spec: StudySpec, cell: Cell) -> list[str]:
    command = [sys.executable, "-m", "pacofr.cli", "fit"]
    for path in spec.base_config:
        command += ["--config", path]
    for name, layer in zip(("common", "arm"), spec.fit_override_layers(cell)):
        path = cell.folder / f"overrides_{name}.yaml"
        atomic_write_text(path, yaml.safe_dump(nested(layer), sort_keys=False))
        command += ["--config", str(path)]
    return command + ["--run_dir", str(cell.run_dir), "--resume", "auto"]


def checkpoint_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("global_step", -1))


def pretrain(spec: StudySpec, cell: Cell) -> dict[str, Any]:
    """Train the cell (or continue it); returns the pretraining facts for its result."""
    steps = max_steps(cell_config(spec, cell))
    last = cell.run_dir / "checkpoints" / "last.ckpt"
    started = time.perf_counter()
    if not (last.is_file() and checkpoint_step(last) >= steps):
        cell.folder.mkdir(parents=True, exist_ok=True)
        resumed = resolve_resume("auto", cell.run_dir / "checkpoints")
        with open(cell.log_path, "a") as fh:
            fh.write(f"\n=== {dt.datetime.now().isoformat(timespec='seconds')} {'resume' if resumed else 'start'}\n")
            fh.flush()
            code = run_forwarding_signals(fit_command(spec, cell), fh)
        if code in (EXIT_REQUEUED, EXIT_PREEMPTED):
            what = "the job is queued again" if code == EXIT_REQUEUED else "run the same command again to continue"
            raise CellPreempted(f"{cell.name}: preempted, checkpoint written; {what}", code)
        if code != 0:
            raise CellError(f"pretraining of {cell.name} failed (exit {code}); see {cell.log_path}")
    step = checkpoint_step(last) if last.is_file() else -1
    if step < steps:
        raise CellError(f"{cell.name}: last.ckpt is at step {step}, expected {steps}; see {cell.log_path}")
    return {"steps": step, "checkpoint": str(last), "seconds": round(time.perf_counter() - started, 1)}


def read_curves(tb_dir: Path, tags: tuple[str, ...] = CURVE_TAGS) -> dict[str, list[list[float]]]:
    """``{tag: [[step, value], ...]}`` from a run's TensorBoard events (empty when there are none)."""
    if not tb_dir.is_dir():
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    events.Reload()
    present = set(events.Tags().get("scalars", []))
    curves = {}
    for tag in tags:
        if tag in present:
            by_step = {e.step: e.value for e in events.Scalars(tag)}  # a resumed run may log a step twice
            curves[tag] = [[step, round(float(v), 6)] for step, v in sorted(by_step.items())]
    return curves


def encoder_for(spec: StudySpec, cell: Cell, checkpoint: str | None) -> tuple[torch.nn.Module, int]:
    size, img_size, patch_size = encoder_geometry(cell_config(spec, cell))
    if checkpoint is not None:
        return load_backbone(checkpoint), img_size
    torch.manual_seed(cell.seed)  # the pretraining's own initialisation (MAE init, fixed sin-cos positions)
    return build_encoder(size, img_size, patch_size), img_size


def machine() -> dict[str, Any]:
    return {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def read_result(cell: Cell) -> dict[str, Any] | None:
    try:
        return json.loads(cell.result_path.read_text())
    except (OSError, ValueError):
        return None


def is_done(spec: StudySpec, cell: Cell) -> bool:
    result = read_result(cell)
    return result is not None and result.get("cell_key") == spec.cell_key(cell)


def run_cell(spec: StudySpec, cell: Cell, force: bool = False) -> dict[str, Any]:
    """Pretrain (unless the arm is random-init), probe, write ``result.json``; skipped when done."""
    if not force and is_done(spec, cell):
        log.info("study %s: %s done, skipped", spec.name, cell.name)
        return read_result(cell)
    if not (Path(spec.data_root) / "_info.json").is_file():
        raise StudyConfigError(
            f"no dataset at {spec.data_root} (missing _info.json): write it with `pacofr-prep synth --out "
            f"{spec.data_root} ...` (the study config's data_root comment gives the arguments)"
        )
    started = time.perf_counter()
    log.info("study %s: %s ...", spec.name, cell.name)
    facts = pretrain(spec, cell) if cell.arm.pretrain else None
    torch.manual_seed(cell.seed)
    encoder, img_size = encoder_for(spec, cell, facts["checkpoint"] if facts else None)
    probe_started = time.perf_counter()
    scores, chance = run_probe(encoder, spec.data_root, spec.probe, cell.seed, img_size)
    result = {
        "study": spec.name,
        "arm": cell.arm.name,
        "label": cell.arm.label,
        "seed": cell.seed,
        "cell_key": spec.cell_key(cell),
        "pretrain": facts,
        "overrides": spec.fit_overrides(cell) if cell.arm.pretrain else {},
        "img_size": img_size,
        "scores": scores,
        "chance": chance,
        "curves": read_curves(cell.run_dir / "tb") if cell.arm.pretrain else {},
        "seconds": {
            "probe": round(time.perf_counter() - probe_started, 1),
            "cell": round(time.perf_counter() - started, 1),
        },
        "machine": machine(),
        "code": git_commit(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_text(cell.result_path, json.dumps(result, indent=1))
    log.info("study %s: %s written (%.0f s)", spec.name, cell.name, result["seconds"]["cell"])
    return result


def probe_columns(scores: dict[str, Any]) -> list[tuple[str, str]]:
    """(measure, view) pairs a probe result holds, views in order, measures in :data:`MEASURES` order."""
    views = ["full", *scores.get("views", {})]
    return [(m, v) for v in views for m in MEASURES if measure_value(scores, m, "clean", v) is not None]


def column_name(measure: str, view: str) -> str:
    return measure if view == "full" else f"{measure}@{view}"


def probe_check(spec: StudySpec, cell: Cell, probe_seeds: list[int], budgets: list[int]) -> dict[str, Any]:
    """The finished cell's encoder probed with every (probe seed, budget): how much the probe alone moves
    every measure of every view. Written to ``<cell>/probe_check.json``."""
    result = read_result(cell)
    if result is None:
        raise CellError(f"{cell.name} has no result yet: run it first (pacofr study cell / run)")
    checkpoint = result["pretrain"]["checkpoint"] if result["pretrain"] else None
    runs = []
    for budget in budgets:
        settings = dataclasses.replace(spec.probe, train_faces=budget)
        for probe_seed in probe_seeds:
            torch.manual_seed(cell.seed)
            encoder, img_size = encoder_for(spec, cell, checkpoint)
            started = time.perf_counter()
            scores, _ = run_probe(encoder, spec.data_root, settings, probe_seed, img_size)
            columns = probe_columns(scores)
            runs.append(
                {
                    "probe_seed": probe_seed,
                    "train_faces": scores["faces"]["train"],
                    **{
                        key: {column_name(m, v): measure_value(scores, m, cond, v) for m, v in columns}
                        for key, cond in (("scores", "clean"), ("scores_occluded", "occluded"))
                    },
                    "seconds": round(time.perf_counter() - started, 1),
                }
            )
    names = list(runs[0]["scores"])
    check = {"cell": cell.name, "checkpoint": checkpoint, "runs": runs, **probe_spreads(runs, names)}
    atomic_write_text(cell.folder / "probe_check.json", json.dumps(check, indent=1))
    return check


def probe_spreads(runs: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, float]]:
    """How much the probe alone moves each score: ``seed_spread`` (the largest max - min over probe seeds at
    one budget), ``budget_change`` (largest budget minus smallest, mean over the seeds), ``spread`` (max - min
    over all runs)."""
    budgets = sorted({r["train_faces"] for r in runs})
    at = {(r["train_faces"], r["probe_seed"]): r["scores"] for r in runs}
    seeds = sorted({r["probe_seed"] for r in runs})
    out: dict[str, dict[str, float]] = {"seed_spread": {}, "budget_change": {}, "spread": {}}
    for name in names:
        values = [r["scores"][name] for r in runs]
        out["spread"][name] = max(values) - min(values)
        per_budget = [[at[b, s][name] for s in seeds if (b, s) in at] for b in budgets]
        out["seed_spread"][name] = max(max(v) - min(v) for v in per_budget)
        both = [s for s in seeds if (budgets[0], s) in at and (budgets[-1], s) in at]
        changes = [at[budgets[-1], s][name] - at[budgets[0], s][name] for s in both]
        out["budget_change"][name] = sum(changes) / len(changes) if changes else float("nan")
    return out


def format_probe_check(check: dict[str, Any]) -> str:
    """One row per measure and view, one column per (probe seed, budget), then how much the probe moves it."""
    names = list(check["spread"])
    width = max(20, *(len(n) for n in names))
    lines = [f"probe check of {check['cell']}: clean scores per (probe seed, training faces)"]
    runs = "".join(f"  {r['probe_seed']:>4d}/{r['train_faces']:<5d}" for r in check["runs"])
    lines.append(f"{'measure (seed/faces)'.ljust(width)}{runs}  seed spread  budget change")
    for name in names:
        values = "".join(f"  {r['scores'][name]:10.4f}" for r in check["runs"])
        moved = f"  {check['seed_spread'][name]:11.4f}  {check['budget_change'][name]:+13.4f}"
        lines.append(f"{name.ljust(width)}{values}{moved}")
    lines.append("spread (max - min): " + ", ".join(f"{n} {v:.4f}" for n, v in check["spread"].items()))
    return "\n".join(lines)
