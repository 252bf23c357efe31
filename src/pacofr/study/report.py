"""The study's table from its cells' JSONs: mean +- sd per arm, measure and view of the probe
(:data:`pacofr.eval.feature_probe.MEASURES`, :data:`pacofr.eval.probe_views.VIEWS`), the chance row, paired
differences against each reference arm (``reference_arms``) with 95 % t-intervals, per-group parsing tables,
plots and a TensorBoard HPARAMS page. Results written before a measure existed simply lack its column."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pacofr.eval.feature_probe import CONDITIONS, MEASURES, measure_value
from pacofr.eval.probe_views import VIEWS
from pacofr.run_folder import atomic_write_text

from .runner import read_result
from .spec import StudySpec
from .stats import paired

TASK_TITLES = {
    "parsing": "Parsing, mean F1 over 18 classes (argmax of the ridge; higher is better)",
    "landmarks": "Landmarks, NME by inter-ocular distance (lower is better)",
    "pose": "Head pose, mean absolute error in degrees (lower is better)",
    "verification": "Verification, 10-fold accuracy on unseen identities, fixed cosine (higher is better)",
}
MEASURE_TITLES = {
    **TASK_TITLES,
    "parsing_r2": "Parsing, R² of the 9 region groups' shares against the position prior (higher is better)",
    "parsing_dice": "Parsing, soft Dice of the 9 region groups' shares (higher is better)",
    "parsing_f1_present": "Parsing, F1 of a calibrated labelling over faces with the part, mean of 8 groups "
    "(higher is better)",
    "verification_learned": "Verification, 10-fold accuracy, cosine after LDA learned on the training identities "
    "(higher is better)",
}
VIEW_TITLES = {
    "full": "all patches in one forward",
    "subsets": "random subsets of {visible:.0%} of the patches, each encoded alone, {covers} cover(s)",
}
READING = {"visible": 0.25, "covers": 1}  # a summary without its reading: the defaults
DIGITS = {"parsing": 4, "landmarks": 4, "pose": 2, "verification": 4}


def column_key(measure: str, view: str, condition: str) -> str:
    """``summary["tasks"]`` key: ``parsing/clean`` (full view, as before), ``parsing_r2@subsets/occluded``."""
    return f"{measure}/{condition}" if view == "full" else f"{measure}@{view}/{condition}"


def digits(measure: str) -> int:
    return DIGITS.get(measure, 4)


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


def _column(spec: StudySpec, by_arm: dict[str, dict[int, dict[str, Any]]], measure: str, view: str, cond: str):
    """One measure of one view and condition: per arm its values by seed, mean, sd, and the paired differences
    against every reference arm (``vs``; ``vs_reference``: the first). None when no cell has the measure."""
    higher = MEASURES[measure][1]
    by_seed = {
        arm: {s: v for s, r in seeds.items() if (v := measure_value(r["scores"], measure, cond, view)) is not None}
        for arm, seeds in by_arm.items()
    }
    if not any(by_seed.values()):
        return None
    rows = []
    for arm in spec.arms:
        values = by_seed.get(arm.name)
        if not values:
            continue
        seeds = sorted(values)
        row: dict[str, Any] = {
            "arm": arm.name,
            "label": arm.label,
            "seeds": seeds,
            "values": [values[s] for s in seeds],
        }
        row["mean"] = float(np.mean(row["values"]))
        row["sd"] = float(np.std(row["values"], ddof=1)) if len(seeds) > 1 else math.nan
        row["vs"] = {
            ref: vs
            for ref in spec.references
            if ref != arm.name and (vs := paired(values, by_seed.get(ref, {}), higher)) is not None
        }
        if spec.references[0] in row["vs"]:
            row["vs_reference"] = row["vs"][spec.references[0]]
        rows.append(row)
    chance = [v for seeds in by_arm.values() for r in seeds.values() if (v := _chance(r, measure, cond)) is not None]
    return {
        "measure": measure,
        "view": view,
        "metric": MEASURES[measure][0],
        "higher_is_better": higher,
        "chance": float(np.mean(chance)) if chance else math.nan,
        "rows": rows,
    }


def _chance(result: dict[str, Any], measure: str, cond: str) -> float | None:
    value = result.get("chance", {}).get(measure, {}).get(cond)
    return None if value is None else float(value)


def summarise(spec: StudySpec, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per measure, view and condition: per-arm values by seed, mean, sd; the chance row; paired differences
    against each reference arm. Measures no cell has are left out (results written before they existed)."""
    by_arm: dict[str, dict[int, dict[str, Any]]] = {}
    for r in results:
        by_arm.setdefault(r["arm"], {})[r["seed"]] = r
    out: dict[str, Any] = {
        "study": spec.name,
        "reference_arm": spec.references[0],
        "reference_arms": list(spec.references),
        "reading": {"visible": spec.probe.visible_fraction, "covers": spec.probe.subset_covers},
        "tasks": {},
    }
    for view in VIEWS:
        for measure in MEASURES:
            for cond in CONDITIONS:
                column = _column(spec, by_arm, measure, view, cond)
                if column is not None:
                    out["tasks"][column_key(measure, view, cond)] = column
    out["parsing_groups"] = _group_means(spec, by_arm)
    return out


def _group_means(spec: StudySpec, by_arm: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """``{view: {metric: {arm: {group: mean over seeds}}}}`` of the clean per-group parsing scores."""
    out: dict[str, Any] = {}
    for view in VIEWS:
        for metric in ("r2", "f1_present"):
            for arm in spec.arms:
                tables = []
                for r in by_arm.get(arm.name, {}).values():
                    scores = r["scores"] if view == "full" else r["scores"].get("views", {}).get(view, {})
                    groups = scores.get("parsing_groups", {}).get("clean", {}).get(metric)
                    if groups:
                        tables.append(groups)
                if tables:
                    means = {g: float(np.nanmean([t[g] for t in tables])) for g in tables[0]}
                    out.setdefault(view, {}).setdefault(metric, {})[arm.name] = means
    return out


def _fmt(value: float, digits: int, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _vs_cell(row: dict[str, Any], ref: str, d: int) -> str:
    if row["arm"] == ref:
        return "reference"
    vs = row.get("vs", {}).get(ref)
    if vs is None:
        return ""
    low, high = vs["ci95"]
    return f"{_fmt(vs['mean'], d, True)} [{_fmt(low, d, True)}, {_fmt(high, d, True)}] {vs['verdict']}"


def _measure_table(summary: dict[str, Any], measure: str, view: str) -> list[str]:
    """Clean and occluded mean +- sd of one measure and view, each with the paired differences against every
    reference arm."""
    refs = summary.get("reference_arms") or [summary["reference_arm"]]
    d = digits(measure)
    clean, occl = (summary["tasks"][column_key(measure, view, c)] for c in CONDITIONS)
    per_condition = ["mean ± sd", *(f"Δ vs {ref}, 95 % CI" for ref in refs)]
    header = ["arm", *(f"{c} ({h})" if h == "mean ± sd" else h for c in CONDITIONS for h in per_condition), "seeds"]
    blanks = [""] * len(refs)
    chance = ["chance (no features)", _fmt(clean["chance"], d), *blanks, _fmt(occl["chance"], d), *blanks, ""]
    lines = [
        f"#### {MEASURE_TITLES[measure]}; {view} view ({VIEW_TITLES[view].format(**summary.get('reading', READING))})",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(["---"] * len(header)) + " |",
        "| " + " | ".join(chance) + " |",
    ]
    occluded_rows = {r["arm"]: r for r in occl["rows"]}
    for row_c in clean["rows"]:
        cells = [f"{row_c['label']} (`{row_c['arm']}`)"]
        for row in (row_c, occluded_rows.get(row_c["arm"])):
            if row is None:
                cells += ["–", *blanks]
                continue
            cells.append(f"{_fmt(row['mean'], d)} ± {_fmt(row['sd'], d)}")
            cells += [_vs_cell(row, ref, d) for ref in refs]
        cells.append(str(len(row_c["values"])))
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _group_tables(summary: dict[str, Any]) -> list[str]:
    """Per region group, mean over seeds (clean faces): R² against the prior and the calibrated F1."""
    titles = {"r2": "R² of the shares against the position prior", "f1_present": "F1 over faces with the part"}
    lines = []
    for view, metrics in summary.get("parsing_groups", {}).items():
        for metric, arms in metrics.items():
            groups = list(next(iter(arms.values())))
            lines += [
                f"#### Parsing per region group, {titles[metric]} (clean faces, mean of the seeds; {view} view)",
                "",
                "| arm | " + " | ".join(groups) + " |",
                "| " + " | ".join(["---"] * (len(groups) + 1)) + " |",
            ]
            lines += [f"| `{arm}` | " + " | ".join(_fmt(v[g], 3) for g in groups) + " |" for arm, v in arms.items()]
            lines.append("")
    return lines


def markdown_tables(summary: dict[str, Any]) -> str:
    """One table per measure and view: clean and occluded mean +- sd, and the paired differences against each
    reference arm; then the per-group parsing tables."""
    lines = []
    for view in VIEWS:
        for measure in MEASURES:
            if all(column_key(measure, view, c) in summary["tasks"] for c in CONDITIONS):
                lines += _measure_table(summary, measure, view)
    return "\n".join(lines + _group_tables(summary))


def plot_scores(summary: dict[str, Any], out: Path) -> Path:
    """One panel per measure and view (clean): every seed a dot, the mean a bar, the chance level a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for v in VIEWS for m in MEASURES if (k := column_key(m, v, "clean")) in summary["tasks"]]
    cols = min(4, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.2 * rows), constrained_layout=True, squeeze=False)
    for ax in axes.flat[len(keys) :]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, keys):
        entry = summary["tasks"][key]
        names = [r["arm"] for r in entry["rows"]]
        for i, row in enumerate(entry["rows"]):
            ax.bar(i, row["mean"], color="#c6dbef", edgecolor="#3182bd", width=0.7)
            ax.scatter([i] * len(row["values"]), row["values"], color="#08519c", s=18, zorder=3)
        if not math.isnan(entry["chance"]):
            ax.axhline(entry["chance"], color="#d62728", linestyle="--", linewidth=1, label="chance")
            ax.legend(fontsize=8, loc="best")
        values = [v for r in entry["rows"] for v in r["values"]] + [entry["chance"]]
        values = [v for v in values if not math.isnan(v)]
        span = max(values) - min(values) or 1.0
        ax.set_ylim(min(values) - 0.15 * span, max(values) + 0.15 * span)
        ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
        better = "higher" if entry["higher_is_better"] else "lower"
        ax.set_title(f"{entry['measure']} ({entry['view']}): {entry['metric']} ({better} better)", fontsize=9)
    fig.suptitle(f"study {summary['study']}: one dot per seed, bar = mean (clean faces)", fontsize=11)
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
        for view in VIEWS:
            for measure, (name, _) in MEASURES.items():
                for cond in CONDITIONS:
                    value = measure_value(r["scores"], measure, cond, view)
                    if value is not None:
                        suffix = ("" if view == "full" else f"_{view}") + ("" if cond == "clean" else "_occluded")
                        metrics[f"study/{measure}_{name}{suffix}"] = value
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
