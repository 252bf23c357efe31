"""The verdict tables of docs/study.md from a study's ``summary.json`` (written by ``pacofr study aggregate``).

One compact table per reading of the encoder (all patches; 25 %-visible subsets), clean faces: the mean over
seeds of every arm given, and the paired differences (95 % t-intervals over seeds) that the verdict rests on,
e.g. ``pacofr`` against the parser-supervision control ``mae_parse``. The full tables (occluded faces, every
arm, per-group parsing) are the study's own ``table.md``.

    python bench/study_verdict.py runs/study/default/summary.json \\
        --arms random_init,mae,mae_parse,mae_spatial,pacofr --pairs pacofr:mae_parse,pacofr:mae_spatial,mae_parse:mae

``--earlier OLD_SUMMARY`` adds the (arm, seed) values of an earlier aggregate that the summary lacks: cells
whose ``result.json`` was lost but whose scores an earlier ``summary.json`` kept. Every mean and paired
difference of a task that gained values is then recomputed over the merged seeds, and each table says which
cells came from the earlier summary, so a reader sees which seeds were run from which snapshot of the code.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from pacofr.study.stats import paired

MEASURES = [  # (measure, name, digits)
    ("landmarks", "landmark NME ↓", 4),
    ("pose", "pose MAE (°) ↓", 2),
    ("verification", "verification, fixed cosine ↑", 3),
    ("verification_learned", "verification, learned projection ↑", 3),
    ("parsing_r2", "parsing R² of the shares ↑", 3),
    ("parsing_dice", "parsing soft Dice ↑", 3),
    ("parsing_f1_present", "parsing F1, parts present ↑", 3),
]
VIEWS = {"full": "all patches in one forward", "subsets": "25 %-visible subsets (the sequence length MAE trains on)"}


def _number(value: float | None, digits: int) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _paired(comparison: dict[str, Any] | None, digits: int) -> str:
    if not comparison:
        return "–"
    low, high = comparison["ci95"]
    mean, n = comparison["mean"], len(comparison["seeds"])
    if low is None or math.isnan(low):
        return f"{mean:+.{digits}f} (1 seed)"
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}] ({n} seeds)"


def _difference(rows: dict[str, dict[str, Any]], arm: str, other: str, digits: int) -> str:
    """``arm − other``: the summary pairs every arm with each reference arm; otherwise the seeds both have."""
    row = rows.get(arm)
    if row is None or other not in rows:
        return "–"
    if other in row.get("vs", {}):
        return _paired(row["vs"][other], digits)
    mine, theirs = (dict(zip(r["seeds"], r["values"])) for r in (row, rows[other]))
    return _paired(paired(mine, theirs, higher=True), digits)  # the aggregate's own pairing and t-interval


def merge_earlier(summary: dict[str, Any], earlier: dict[str, Any]) -> list[tuple[str, int]]:
    """Add to ``summary`` (in place) the (arm, seed) values only ``earlier`` has; returns the cells added.

    A task that gains values loses its precomputed comparisons (``vs``): they covered the summary's seeds
    only, and ``_difference`` pairs the merged seeds instead.
    """
    added: set[tuple[str, int]] = set()
    for key, old_task in earlier.get("tasks", {}).items():
        task = summary.setdefault("tasks", {}).setdefault(key, {"rows": []})
        rows = {r["arm"]: r for r in task["rows"]}
        changed = False
        for old in old_task.get("rows", []):
            row = rows.get(old["arm"])
            if row is None:
                row = {"arm": old["arm"], "seeds": [], "values": []}
                task["rows"].append(row)
                rows[old["arm"]] = row
            values = dict(zip(row["seeds"], row["values"]))
            for seed, value in zip(old["seeds"], old["values"]):
                if seed not in values:
                    values[seed] = value
                    added.add((old["arm"], seed))
                    changed = True
            row["seeds"] = sorted(values)
            row["values"] = [values[s] for s in row["seeds"]]
            finite = [v for v in row["values"] if v is not None and not math.isnan(v)]
            row["mean"] = sum(finite) / len(finite) if finite else math.nan
        if changed:
            for row in task["rows"]:
                row.pop("vs", None)
    return sorted(added)


def verdict_tables(
    summary: dict[str, Any],
    arms: list[str],
    pairs: list[tuple[str, str]],
    earlier_cells: list[tuple[str, int]] = (),
    views: list[str] | None = None,
) -> str:
    lines = []
    for view, title in VIEWS.items():
        if views is not None and view not in views:
            continue
        lines += [
            f"**{title}** (clean faces; mean over seeds, seeds in brackets; Δ: paired over seeds, 95 % t-interval)",
            "",
        ]
        header = ["measure", *(f"`{a}`" for a in arms), *(f"Δ `{a}` − `{b}`" for a, b in pairs)]
        lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        for measure, name, digits in MEASURES:
            task = summary["tasks"].get(f"{measure}/clean" if view == "full" else f"{measure}@subsets/clean")
            if task is None:
                continue
            rows = {r["arm"]: r for r in task["rows"]}
            means = [
                "–" if a not in rows else f"{_number(rows[a]['mean'], digits)} ({len(rows[a]['seeds'])})" for a in arms
            ]
            diffs = [_difference(rows, a, b, digits) for a, b in pairs]
            lines.append("| " + " | ".join([name, *means, *diffs]) + " |")
        shown = [f"`{a}` seed {s}" for a, s in earlier_cells if a in arms or any(a in p for p in pairs)]
        if shown:
            lines += ["", "From the earlier summary (their result.json lost): " + ", ".join(shown) + "."]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("summary", type=Path, help="a study's summary.json (pacofr study aggregate)")
    parser.add_argument("--arms", default="random_init,mae,mae_parse,mae_spatial,pacofr", help="columns, in order")
    parser.add_argument("--pairs", default="pacofr:mae_parse,pacofr:mae_spatial,mae_parse:mae", help="a:b differences")
    parser.add_argument(
        "--earlier", type=Path, help="an earlier summary.json: its (arm, seed) values the summary lacks"
    )
    parser.add_argument("--views", default=",".join(VIEWS), help="readings to print, of: " + ", ".join(VIEWS))
    args = parser.parse_args()
    if unknown := set(args.views.split(",")) - set(VIEWS):
        parser.error(f"unknown view(s) {sorted(unknown)}; use {', '.join(VIEWS)}")

    def read(path: Path) -> dict[str, Any]:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as err:
            parser.exit(2, f"study_verdict: cannot read {path} ({type(err).__name__}): give a study's summary.json\n")

    summary = read(args.summary)
    pairs = [tuple(p.split(":", 1)) for p in args.pairs.split(",")]
    added = merge_earlier(summary, read(args.earlier)) if args.earlier else []
    print(verdict_tables(summary, args.arms.split(","), pairs, added, args.views.split(",")))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
