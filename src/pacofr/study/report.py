"""The study's table from its cells' JSONs: mean +- sd per arm and task, the chance row, paired
differences against the reference arm with 95 % t-intervals, plots and a TensorBoard HPARAMS page."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from pacofr.eval.feature_probe import PRIMARY, TASKS
from pacofr.run_folder import atomic_write_text

from .runner import read_result
from .spec import StudySpec

CONDITIONS = ("clean", "occluded")
TASK_TITLES = {
    "parsing": "Parsing, mean F1 over 18 classes (higher is better)",
    "landmarks": "Landmarks, NME by inter-ocular distance (lower is better)",
    "pose": "Head pose, mean absolute error in degrees (lower is better)",
    "verification": "Verification, 10-fold accuracy on unseen identities (higher is better)",
}
DIGITS = {"parsing": 4, "landmarks": 4, "pose": 2, "verification": 4}


def collect(spec: StudySpec) -> tuple[list[dict[str, Any]], list[str]]:
    """(results of the finished cells, names of the missing ones)."""
    results, missing = [], []
    for cell in spec.cells():
        result = read_result(cell)
        if result is None or result.get("cell_key") != spec.cell_key(cell):
            missing.append(cell.name)
        else:
            results.append(result)
    return results, missing


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of a t-interval; nan bounds with fewer than two values."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def summarise(spec: StudySpec, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per task and condition: per-arm values by seed, mean, sd; the chance row; paired differences."""
    by_arm: dict[str, dict[int, dict[str, Any]]] = {}
    for r in results:
        by_arm.setdefault(r["arm"], {})[r["seed"]] = r
    arms = [a for a in spec.arms if a.name in by_arm]
    out: dict[str, Any] = {"study": spec.name, "reference_arm": spec.reference_arm, "tasks": {}}
    for task in TASKS:
        metric, higher = PRIMARY[task]
        for cond in CONDITIONS:
            rows = []
            chance = [r["chance"][task][cond] for r in results]
            reference = by_arm.get(spec.reference_arm, {})
            for arm in arms:
                seeds = sorted(by_arm[arm.name])
                values = [by_arm[arm.name][s]["scores"][task][cond] for s in seeds]
                row = {
                    "arm": arm.name,
                    "label": arm.label,
                    "seeds": seeds,
                    "values": values,
                    "mean": float(np.mean(values)),
                    "sd": float(np.std(values, ddof=1)) if len(values) > 1 else math.nan,
                }
                paired = [s for s in seeds if s in reference]
                if arm.name != spec.reference_arm and paired:
                    diffs = [
                        by_arm[arm.name][s]["scores"][task][cond] - reference[s]["scores"][task][cond] for s in paired
                    ]
                    mean, low, high = t_interval(diffs)
                    better = mean > 0 if higher else mean < 0
                    separated = not math.isnan(low) and (low > 0 or high < 0)
                    verdict = ("better" if better else "worse") if separated else "within noise"
                    row["vs_reference"] = {
                        "seeds": paired,
                        "diffs": diffs,
                        "mean": mean,
                        "ci95": [low, high],
                        "verdict": verdict if len(paired) > 1 else f"n/a ({len(paired)} seed)",
                    }
                rows.append(row)
            out["tasks"][f"{task}/{cond}"] = {
                "metric": metric,
                "higher_is_better": higher,
                "chance": float(np.mean(chance)) if chance else math.nan,
                "rows": rows,
            }
    return out


def _fmt(value: float, digits: int, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def markdown_tables(summary: dict[str, Any]) -> str:
    """One table per task: clean and occluded mean +- sd, and the paired difference against the reference."""
    ref = summary["reference_arm"]
    lines = []
    for task in TASKS:
        d = DIGITS[task]
        clean, occl = summary["tasks"][f"{task}/clean"], summary["tasks"][f"{task}/occluded"]
        lines += [
            f"#### {TASK_TITLES[task]}",
            "",
            f"| arm | clean (mean ± sd) | Δ vs {ref}, 95 % CI | occluded (mean ± sd) | Δ vs {ref}, 95 % CI | seeds |",
            "| --- | --- | --- | --- | --- | --- |",
            f"| chance (no features) | {_fmt(clean['chance'], d)} | | {_fmt(occl['chance'], d)} | | |",
        ]
        for row_c, row_o in zip(clean["rows"], occl["rows"]):
            cells = [f"{row_c['label']} (`{row_c['arm']}`)"]
            for row in (row_c, row_o):
                cells.append(f"{_fmt(row['mean'], d)} ± {_fmt(row['sd'], d)}")
                vs = row.get("vs_reference")
                if vs is None:
                    cells.append("reference" if row["arm"] == ref else "")
                else:
                    low, high = vs["ci95"]
                    cells.append(
                        f"{_fmt(vs['mean'], d, True)} [{_fmt(low, d, True)}, {_fmt(high, d, True)}] {vs['verdict']}"
                    )
            cells.append(str(len(row_c["values"])))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_scores(summary: dict[str, Any], out: Path) -> Path:
    """One panel per task (clean): every seed a dot, the mean a bar, the chance level a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TASKS), figsize=(4.2 * len(TASKS), 4.2), constrained_layout=True)
    for ax, task in zip(axes, TASKS):
        entry = summary["tasks"][f"{task}/clean"]
        names = [r["arm"] for r in entry["rows"]]
        for i, row in enumerate(entry["rows"]):
            ax.bar(i, row["mean"], color="#c6dbef", edgecolor="#3182bd", width=0.7)
            ax.scatter([i] * len(row["values"]), row["values"], color="#08519c", s=18, zorder=3)
        ax.axhline(entry["chance"], color="#d62728", linestyle="--", linewidth=1, label="chance")
        values = [v for r in entry["rows"] for v in r["values"]] + [entry["chance"]]
        span = max(values) - min(values) or 1.0
        ax.set_ylim(min(values) - 0.15 * span, max(values) + 0.15 * span)
        ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
        better = "higher" if entry["higher_is_better"] else "lower"
        ax.set_title(f"{task}: {entry['metric']} ({better} better)", fontsize=10)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"study {summary['study']}: one dot per seed, bar = mean", fontsize=11)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_curves(results: list[dict[str, Any]], spec: StudySpec, out: Path) -> Path | None:
    """Online-probe curves over pretraining: pose MAE and identity k-NN, one line per arm (seed mean)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tags = (
        ("probe/pose_mae", "online probe: pose MAE (deg, lower better)"),
        ("probe/knn_identity_acc", "online probe: identity 1-NN accuracy (higher better)"),
    )
    if not any(r.get("curves") for r in results):
        return None
    fig, axes = plt.subplots(1, len(tags), figsize=(6.5 * len(tags), 4.2), constrained_layout=True)
    colours = plt.get_cmap("tab10")
    for ax, (tag, title) in zip(axes, tags):
        for k, arm in enumerate(spec.arms):
            runs = [r["curves"][tag] for r in results if r["arm"] == arm.name and tag in r.get("curves", {})]
            if not runs:
                continue
            steps = sorted(set.intersection(*[{s for s, _ in run} for run in runs]))
            mean = [np.mean([dict(map(tuple, run))[s] for run in runs]) for s in steps]
            ax.plot(steps, mean, marker="o", markersize=3, color=colours(k % 10), label=f"{arm.name} (n={len(runs)})")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("pretraining step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_hparams(spec: StudySpec, results: list[dict[str, Any]], tb_dir: Path) -> None:
    """TensorBoard HPARAMS: one run per cell, its arm, seed and switches as hyper-parameters, its scores as metrics."""
    from torch.utils.tensorboard import SummaryWriter

    shutil.rmtree(tb_dir, ignore_errors=True)  # rebuilt from the JSONs each time
    for r in results:
        hparams: dict[str, Any] = {"arm": r["arm"], "seed": r["seed"], "pretrained": r["pretrain"] is not None}
        for key, value in r.get("overrides", {}).items():
            if key.startswith(("model.", "data.masker")):
                hparams[key] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
        metrics = {}
        for task in TASKS:
            name = PRIMARY[task][0]
            for cond in CONDITIONS:
                metrics[f"study/{task}_{name}{'' if cond == 'clean' else '_occluded'}"] = r["scores"][task][cond]
        with SummaryWriter(log_dir=str(tb_dir)) as writer:
            writer.add_hparams(hparams, metrics, run_name=f"{r['arm']}_seed{r['seed']}")


def aggregate(spec: StudySpec, out_dir: Path | None = None, plots_dir: Path | None = None) -> dict[str, Any]:
    """Write ``summary.json``, ``table.md``, the PNGs and the HPARAMS page; returns the summary."""
    results, missing = collect(spec)
    if not results:
        raise FileNotFoundError(f"study {spec.name}: no finished cell under {spec.folder} (run `pacofr study run`)")
    out_dir = out_dir or spec.folder
    plots_dir = plots_dir or out_dir / "img"
    summary = summarise(spec, results)
    summary["missing_cells"] = missing
    summary["cells"] = len(results)
    pretrain = [r["pretrain"]["seconds"] for r in results if r["pretrain"]]
    summary["seconds"] = {
        "pretrain_per_cell": float(np.mean(pretrain)) if pretrain else 0.0,
        "probe_per_cell": float(np.mean([r["seconds"]["probe"] for r in results])),
        "total_cells": float(sum(r["seconds"]["cell"] for r in results)),
    }
    summary["machine"] = results[0]["machine"]
    summary["plots"] = [
        str(p)
        for p in (
            plot_scores(summary, plots_dir / f"study_{spec.name}_scores.png"),
            plot_curves(results, spec, plots_dir / f"study_{spec.name}_online_probe.png"),
        )
        if p is not None
    ]
    table = markdown_tables(summary)
    if missing:
        table += f"\nMissing cells (not in the table): {', '.join(missing)}\n"
    atomic_write_text(out_dir / "table.md", table)
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1))
    write_hparams(spec, results, spec.folder / "tb")
    return summary
