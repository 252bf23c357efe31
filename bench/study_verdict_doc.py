"""Write the "Verdict so far" section of docs/study.md from its template and the committed study summaries.

Every number the verdict quotes comes from the aggregates in the repository, never from a hand copy: the
template ``bench/study_verdict_doc.md`` holds the prose, with tokens that this script fills.

    python bench/study_verdict_doc.py           # rewrite the section of docs/study.md
    python bench/study_verdict_doc.py --check   # exit 1 if docs/study.md is not what the data give

Tokens (``{{...}}``; ``view`` is ``full``, all patches in one forward, or ``subsets``, 25 %-visible subsets):
- ``{{D measure a b [view]}}``: the paired difference ``a − b`` with its 95 % t-interval over the seeds both
  have, e.g. ``−0.0028 [−0.0038, −0.0018]`` (pose: ``−0.15° [−0.26, −0.03]``); one seed: the difference alone;
- ``{{Dm measure a b [view]}}``: the mean paired difference alone; ``{{M measure arm [view]}}``: an arm's mean;
- ``{{N arm}}``: how many seeds an arm has; ``{{N2 a b}}``: how many both have;
- ``{{G measure arm}}``: the arm at 2,400 steps minus itself at 800, paired by seed; ``{{C measure a b}}``: how
  the gap ``a − b`` changes from 800 to 2,400 steps, paired by seed;
- the same with ``@3x`` (``{{D@3x ...}}``, ``{{N@3x ...}}``): from the 3×-compute study's summary;
- ``{{REFS measure}}``: every arm against each of the summary's ``reference_arms``, over the merged seeds;
- named blocks: ``{{TABLE name}}`` (a table of ``TABLES``; ``{{TABLE@3x compute3x}}`` from the 3× summary),
  ``{{LEAK}}`` (``bench/input_leak.py``'s read-outs), ``{{MAE_FULL_LOSS}}``, ``{{SEEDS_FULL}}``, ``{{CELLS}}``,
  ``{{CELLS3X}}``, ``{{TODO}}`` (the cells not run yet); with a 3× summary also ``{{GAPS}}`` (each decisive gap
  at 800 and at 2,400 steps), ``{{DONE3X}}`` (the 3× cells run) and ``{{GAINS}}`` (each arm at 2,400 steps
  minus at 800, paired by seed).

The default study's numbers merge ``docs/study_controls/summary.json`` with the cells of the earlier d3e334c
aggregate that it lacks (``study_verdict.merge_earlier``), exactly as the tables do.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONTROLS = REPO / "docs" / "study_controls"
COMPUTE3X = REPO / "docs" / "study_compute3x"
TEMPLATE = Path(__file__).with_name("study_verdict_doc.md")
DOC = REPO / "docs" / "study.md"
SECTION_START, SECTION_END = "## Verdict so far", "## Running it"
DEFAULT_CELLS = 57  # 19 arms x 3 seeds (configs/study/default.yaml)
COMPUTE3X_CELLS = 12  # 6 arms x 2 seeds (configs/study/compute3x.yaml)
FULL_ARMS = ["pacofr_full", "full_mask_token", "full_random_code", "full_lowpass", "full_lowpass8", "mae_full"]

# (arms, pairs, views) of each verdict table; views None = both readings
TABLES: dict[str, tuple[list[str], list[str], list[str] | None]] = {
    "hybrid": (
        ["mae", "mae_parse", "mae_spatial", "pacofr", "pacofr_random_mask", "pacofr_no_replace"],
        [
            "pacofr:mae_spatial",
            "pacofr:mae_parse",
            "pacofr_random_mask:mae_spatial",
            "pacofr:pacofr_random_mask",
            "pacofr:pacofr_no_replace",
            "mae_spatial:mae_parse",
            "mae_parse:mae",
        ],
        None,
    ),
    "full": (
        ["mae_spatial", *FULL_ARMS[:5], "mae_full"],
        ["pacofr_full:full_lowpass8", "pacofr_full:full_mask_token", "pacofr_full:mae_spatial"],
        ["full"],
    ),
    "id_branch": (["mae", "crfrp_mae_batch", "fsfm"], ["fsfm:crfrp_mae_batch", "crfrp_mae_batch:mae"], ["full"]),
    "regions": (
        [
            "mae",
            "crfrp_mae",
            "mae_spatial",
            "pacofr",
            "pacofr_shuffled_regions",
            "pacofr_affinity",
            "pacofr_no_spatial",
        ],
        [
            "pacofr:pacofr_shuffled_regions",
            "pacofr_shuffled_regions:crfrp_mae",
            "pacofr_affinity:crfrp_mae",
            "pacofr:pacofr_affinity",
            "pacofr_no_spatial:crfrp_mae",
            "crfrp_mae:mae",
        ],
        ["full"],
    ),
    "compute3x": (
        ["mae", "mae_parse", "mae_spatial", "pacofr", "pacofr_full", "full_lowpass8"],
        [
            "pacofr:mae_spatial",
            "pacofr:mae_parse",
            "mae_spatial:mae",
            "pacofr_full:full_lowpass8",
            "pacofr_full:mae_spatial",
        ],
        None,
    ),
}


def _load_verdict_module() -> Any:
    spec = importlib.util.spec_from_file_location("study_verdict", Path(__file__).with_name("study_verdict.py"))
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


sv = _load_verdict_module()
DIGITS = {measure: digits for measure, _, digits in sv.MEASURES}


def _fail(message: str) -> None:
    """Bad input: one line on stderr and exit 2, as the project's other commands do."""
    print(f"study_verdict_doc: {message}", file=sys.stderr)
    sys.exit(2)


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        _fail(f"cannot read {path} ({type(err).__name__}): commit the study summaries it names first")


def _format(text: str, measure: str, count: bool = False, mean_only: bool = False) -> str:
    """``study_verdict``'s ``-0.0028 [-0.0038, -0.0018] (3 seeds)`` as the prose writes it: typographic minus,
    pose's unit after the difference, the seed count as ``(3)`` or dropped."""
    value, _, seeds = text.partition(" (")
    if mean_only:
        value = value.split(" [")[0]
    if measure == "pose" and value != "–":  # the unit after the difference, before its interval
        head, _, interval = value.partition(" [")
        value = f"{head}°" + (f" [{interval}" if interval else "")
    if count and seeds:
        value += f" ({seeds.split()[0]})"
    return value.replace("-", "−")


class Study:
    """One study's summary (the default one merged with its earlier aggregate), read the verdict's way."""

    def __init__(self, summary: dict[str, Any], earlier: dict[str, Any] | None = None) -> None:
        self.summary = summary
        self.earlier_cells = sv.merge_earlier(summary, earlier) if earlier else []

    def rows(self, measure: str, view: str = "full") -> dict[str, dict[str, Any]]:
        key = f"{measure}/clean" if view == "full" else f"{measure}@subsets/clean"
        task = self.summary.get("tasks", {}).get(key)
        if task is None:
            raise KeyError(f"the summary has no task {key}")
        return {r["arm"]: r for r in task["rows"]}

    def has(self, measure: str) -> bool:
        return f"{measure}/clean" in self.summary.get("tasks", {})

    def difference(self, measure: str, a: str, b: str, view: str = "full", mean_only: bool = False) -> str:
        rows = self.rows(measure, view)
        for arm in (a, b):
            if arm not in rows or not rows[arm]["seeds"]:
                raise KeyError(f"{measure}: no seeds of {arm} in the summary")
        return _format(sv._difference(rows, a, b, DIGITS[measure]), measure, mean_only=mean_only)

    def mean(self, measure: str, arm: str, view: str = "full") -> str:
        return f"{self.rows(measure, view)[arm]['mean']:.{DIGITS[measure]}f}"

    def seeds(self, arm: str) -> list[int]:
        row = self.rows("landmarks").get(arm)
        return list(row["seeds"]) if row else []

    def table(self, name: str) -> str:
        arms, pairs, views = TABLES[name]
        split = [tuple(p.split(":")) for p in pairs]
        return sv.verdict_tables(self.summary, arms, split, self.earlier_cells, views).rstrip()


def _leak_block() -> str:
    """bench/input_leak.py's read-outs on the seed-0 checkpoints, and the seed-1 check in one line."""
    leak = _read(CONTROLS / "input_leak_seed0.json")
    labels = [k for k in leak if k not in ("train_faces", "test_faces")]
    names = {
        "zero": "predicting zero",
        "position prior (= mask token)": "position prior (the mask token carries no more)",
        "random_codes": "random-code mix (`full_random_code`)",
        "candidates": "candidate mix (`pacofr_full`)",
        "lowpass 8x8": "8 × 8-pooled view (`full_lowpass8`)",
        "lowpass 4x4": "4 × 4-pooled view (`full_lowpass`)",
    }
    lines = [
        "  | read from (held-out MSE, 1.0 = predicting zero) | "
        + " | ".join(f"`{label}` checkpoint" for label in labels) + " |",
        "  |---|" + "---|" * len(labels),
    ]  # fmt: skip
    for key, name in names.items():
        lines.append(f"  | {name} | " + " | ".join(f"{leak[label][key]:.3f}" for label in labels) + " |")
    lines += [
        "",
        f"  ({leak['train_faces']} training and {leak['test_faces']} held-out faces, all 49 patches each; "
        "`docs/study_controls/input_leak_seed0.json`.)",
    ]
    seed1 = _read(CONTROLS / "input_leak_seed1.json")
    labels1 = [k for k in seed1 if k not in ("train_faces", "test_faces")]
    candidates = [seed1[label]["candidates"] for label in labels1]
    lines.append(
        f"  The seed-1 checkpoints of all five full arms give the same: candidate mix {min(candidates):.3f}-"
        f"{max(candidates):.3f}, 8 × 8 view {seed1[labels1[0]]['lowpass 8x8']:.3f}, 4 × 4 view "
        f"{seed1[labels1[0]]['lowpass 4x4']:.3f} (`docs/study_controls/input_leak_seed1.json`)."
    )
    return "\n".join(lines)


def _loss_span(arm: str, curve: str = "loss/rec") -> str:
    """First and last logged value of a training curve over an arm's kept cells, e.g. ``1.13 to 0.49-0.59``."""
    ends = []
    for path in sorted(CONTROLS.glob(f"cells/{arm}-seed*.json")):
        points = _read(path)["curves"][curve]
        ends.append((points[0][1], points[-1][1]))

    def span(values: list[float]) -> str:
        low, high = f"{min(values):.2f}", f"{max(values):.2f}"
        return low if low == high else f"{low}-{high}"

    return f"{span([a for a, _ in ends])} to {span([b for _, b in ends])} over its {len(ends)} seeds"


def _missing(summary: dict[str, Any], earlier_cells: list[tuple[str, int]]) -> list[str]:
    kept = {f"{arm}/seed{seed}" for arm, seed in earlier_cells}
    return [cell for cell in summary.get("missing_cells", []) if cell not in kept]


def _by_arm(cells: list[str]) -> str:
    by_arm: dict[str, list[str]] = {}
    for cell in cells:
        arm, seed = cell.split("/seed")
        by_arm.setdefault(arm, []).append(seed)
    return "; ".join(f"`{a}` seed{'s' if len(s) > 1 else ''} {', '.join(s)}" for a, s in by_arm.items())


GAP_MEASURES = ["landmarks", "pose", "verification_learned", "parsing_r2"]
GAP_PAIRS = [
    "pacofr:mae_spatial",
    "pacofr:mae_parse",
    "mae_spatial:mae",
    "pacofr_full:full_lowpass8",
    "pacofr_full:mae_spatial",
]


def _measure_name(measure: str) -> str:
    return next(name for m, name, _ in sv.MEASURES if m == measure)


def _with_seeds(study: Study, measure: str, a: str, b: str) -> str:
    """``a − b`` with its interval and its seed count as ``(n)``; ``–`` when the two share no seed."""
    return _format(sv._difference(study.rows(measure), a, b, DIGITS[measure]), measure, count=True)


def _by_seed(study: Study, measure: str, arm: str) -> dict[int, float]:
    row = study.rows(measure).get(arm)
    return dict(zip(row["seeds"], row["values"])) if row else {}


def gap_change(default: Study, compute3x: Study, measure: str, a: str, b: str, count: bool = True) -> str:
    """How the gap ``a − b`` moves from 800 to 2,400 steps: (a − b at 2,400) − (a − b at 800), paired by seed."""
    gaps = []
    for study in (default, compute3x):
        mine, theirs = _by_seed(study, measure, a), _by_seed(study, measure, b)
        gaps.append({s: mine[s] - theirs[s] for s in mine if s in theirs})
    change = sv.paired(gaps[1], gaps[0], higher=True)
    if change is None:
        return "–"
    return _format(sv._paired(change, DIGITS[measure]), measure, count=count)


def gap_table(default: Study, compute3x: Study) -> str:
    """Each decisive gap at 800 steps and at 2,400, and its change on the seeds both have (all patches, clean)."""
    lines = [
        "| pair | measure | at 800 steps (seeds) | at 2,400 steps (seeds) | change, same seeds (seeds) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for pair in GAP_PAIRS:
        a, b = pair.split(":")
        for measure in [m for m in GAP_MEASURES if default.has(m) and compute3x.has(m)]:
            at1, at3 = _with_seeds(default, measure, a, b), _with_seeds(compute3x, measure, a, b)
            change = gap_change(default, compute3x, measure, a, b)
            lines.append(f"| `{a}` − `{b}` | {_measure_name(measure)} | {at1} | {at3} | {change} |")
    return "\n".join(lines)


def arm_gain(default: Study, compute3x: Study, measure: str, arm: str, count: bool = True) -> str:
    """An arm at 2,400 steps minus itself at 800, paired by seed: what 3x the steps does to it."""
    gain = sv.paired(_by_seed(compute3x, measure, arm), _by_seed(default, measure, arm), higher=True)
    if gain is None:
        return "–"
    return _format(sv._paired(gain, DIGITS[measure]), measure, count=count)


def gain_table(default: Study, compute3x: Study) -> str:
    """What 3x the steps does to each arm: its score at 2,400 steps minus at 800, paired by seed."""
    arms = TABLES["compute3x"][0]
    lines = ["| measure | " + " | ".join(f"`{a}`" for a in arms) + " |", "|" + " --- |" * (len(arms) + 1)]
    for measure in [m for m in GAP_MEASURES if default.has(m) and compute3x.has(m)]:
        cells = [arm_gain(default, compute3x, measure, arm) for arm in arms]
        lines.append(f"| {_measure_name(measure)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reference_table(study: Study, measure: str) -> str:
    """Every arm of the study against each reference arm, over the merged seeds: its mean ± sd and seed count,
    and each paired difference with its 95 % t-interval (all patches in one forward, clean faces)."""
    rows, d = study.rows(measure), DIGITS[measure]
    refs = study.summary.get("reference_arms")  # the study config's reference_arms, as the aggregate wrote them
    if not refs:
        raise KeyError("the summary names no reference_arms")
    head = "| arm | mean ± sd (seeds) | " + " | ".join(f"arm − `{ref}` (seeds)" for ref in refs) + " |"
    lines = [head, "|" + " --- |" * (len(refs) + 2)]
    for arm, row in rows.items():
        values = [v for v in row["values"] if v is not None and not math.isnan(v)]
        if not values:
            continue
        sd = f" ± {statistics.stdev(values):.{d}f}" if len(values) > 1 else ""
        cells = [
            "reference" if arm == ref else _format(sv._difference(rows, arm, ref, d), measure, count=True)
            for ref in refs
        ]
        label = f"{row['label']} (`{arm}`)" if row.get("label") else f"`{arm}`"
        lines.append(f"| {label} | {statistics.fmean(values):.{d}f}{sd} ({len(values)}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


NEEDS_3X = ("GAPS", "GAINS", "DONE3X")  # named blocks read from the 3x summary


def render(template: str, default: Study, compute3x: Study | None) -> str:
    missing = _missing(default.summary, default.earlier_cells)
    missing3x = list(compute3x.summary.get("missing_cells", [])) if compute3x else []
    if compute3x is None:
        missing3x = ["(all)"]
    todo = []
    if missing:
        todo.append(f"{_by_arm(missing)} of the default grid ({len(missing)} cell{'s' * (len(missing) != 1)})")
    if missing3x == ["(all)"]:
        todo.append(f"the {COMPUTE3X_CELLS} cells of the 3× grid")
    elif missing3x:
        todo.append(f"{_by_arm(missing3x)} of the 3× grid ({len(missing3x)} cell{'s' * (len(missing3x) != 1)})")
    named: dict[str, Callable[[], str]] = {
        "LEAK": _leak_block,
        "MAE_FULL_LOSS": lambda: _loss_span("mae_full"),
        "SEEDS_FULL": lambda: ", ".join(
            f"`{a}` {len(default.seeds(a))} seed{'s' if len(default.seeds(a)) != 1 else ''}" for a in FULL_ARMS
        ),
        "CELLS": lambda: str(DEFAULT_CELLS - len(missing)),
        "CELLS3X": lambda: str(COMPUTE3X_CELLS - len(missing3x)) if compute3x else "0",
        "TODO": lambda: "; ".join(todo) if todo else "nothing: every cell of both grids has run",
    }
    if compute3x is not None:
        named["GAPS"] = lambda: gap_table(default, compute3x)
        named["GAINS"] = lambda: gain_table(default, compute3x)
        named["DONE3X"] = lambda: _by_arm([f"{a}/seed{s}" for a in TABLES["compute3x"][0] for s in compute3x.seeds(a)])

    def fill(match: re.Match[str]) -> str:
        word, *args = match.group(1).split()
        op, _, source = word.partition("@")
        study = default
        if source == "3x":
            if compute3x is None:
                raise KeyError(f"{match.group(0)}: no 3x summary in {COMPUTE3X}")
            study = compute3x
        elif source:
            raise KeyError(f"{match.group(0)}: unknown study @{source}")
        if op in ("D", "Dm"):
            return study.difference(*args[:4], mean_only=op == "Dm") if len(args) >= 3 else _bad(match)
        if op == "M":
            return study.mean(*args)
        if op == "N":
            return str(len(study.seeds(args[0])))
        if op == "N2":
            return str(len(set(study.seeds(args[0])) & set(study.seeds(args[1]))))
        if (op in ("C", "G") or op in NEEDS_3X) and compute3x is None:
            raise KeyError(f"{match.group(0)}: no 3x summary in {COMPUTE3X}")
        if op == "C" and len(args) == 3:
            return gap_change(default, compute3x, *args, count=False)
        if op == "G" and len(args) == 2:
            return arm_gain(default, compute3x, *args, count=False)
        if op == "TABLE":
            return study.table(args[0])
        if op == "REFS" and len(args) == 1:
            return reference_table(study, args[0])
        if op in named and not args:
            return named[op]()
        return _bad(match)

    return re.sub(r"\{\{([^{}]+)\}\}", fill, template)


def _bad(match: re.Match[str]) -> str:
    raise KeyError(f"unknown token {match.group(0)} (see bench/study_verdict_doc.py's docstring)")


def build() -> str:
    default = Study(_read(CONTROLS / "summary.json"), _read(CONTROLS / "summary_d3e334c.json"))
    compute3x = Study(_read(COMPUTE3X / "summary.json")) if (COMPUTE3X / "summary.json").exists() else None
    return render(TEMPLATE.read_text(), default, compute3x)


def replace_section(doc: str, section: str) -> str:
    start, end = doc.index(SECTION_START), doc.index(SECTION_END)
    return doc[:start] + section + doc[end:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/study.md differs from the data")
    args = parser.parse_args()
    try:
        section = build()
    except KeyError as err:
        _fail(err.args[0])
    doc = DOC.read_text()
    new = replace_section(doc, section)
    if args.check:
        if new != doc:
            sys.exit("docs/study.md's verdict differs from the data: run python bench/study_verdict_doc.py")
        print("docs/study.md's verdict matches the summaries")
        return
    DOC.write_text(new)
    print(f"wrote the verdict section of {DOC.relative_to(REPO)}")


if __name__ == "__main__":
    main()
