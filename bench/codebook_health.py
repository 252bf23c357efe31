"""Codebook health over training, before and after a method change: perplexity, usage and re-seeded codes of one
study arm, every seed, read from the runs' TensorBoard logs.

    .venv/bin/python bench/codebook_health.py --before runs/study/default_before --after runs/study/default \
        --arm pacofr --out docs/img/study_codebook_health.png

Prints, per study root, the mean over seeds of each curve's value at a few steps and at the end (a markdown
table), and draws one panel per tag with a line per seed (before dashed, after solid). ``usage_fraction`` is the
share of codes assigned at least once in the monitor's window (its meaning changed with the codebook revision of
docs/method.md §5: before, it read 1.0 through a forced collapse); ``reseeded_total`` did not exist before.
"""

from __future__ import annotations

import argparse
import glob
import statistics
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

TAGS = ("codebook/perplexity", "codebook/usage_fraction", "codebook/reseeded_total")


def curves(root: Path, arm: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """seed -> tag -> [(step, value)] for the arm's seeds under ``root``."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for seed_dir in sorted((root / arm).glob("seed*")):
        series: dict[str, list[tuple[int, float]]] = {}
        for path in glob.glob(str(seed_dir / "run" / "tb" / "events.out.tfevents*")):
            acc = EventAccumulator(path, size_guidance={"scalars": 0})
            acc.Reload()
            for tag in TAGS:
                if tag in acc.Tags()["scalars"]:
                    series.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
        if series:
            out[seed_dir.name] = {tag: sorted(points) for tag, points in series.items()}
    return out


def value_at(points: list[tuple[int, float]], step: int) -> float:
    """The last logged value at or before ``step``."""
    before = [v for s, v in points if s <= step]
    return before[-1] if before else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", type=Path, required=True)
    p.add_argument("--after", type=Path, required=True)
    p.add_argument("--arm", default="pacofr")
    p.add_argument("--steps", type=int, nargs="+", default=[50, 100, 200, 400, 799])
    p.add_argument("--out", type=Path, default=None, help="PNG of the curves")
    args = p.parse_args()
    runs = {"before": curves(args.before, args.arm), "after": curves(args.after, args.arm)}
    for label, seeds in runs.items():
        if not seeds:
            raise SystemExit(f"no TensorBoard logs of arm {args.arm!r} under {getattr(args, label)}")

    print(f"## Codebook health of `{args.arm}`, mean over seeds (before: {args.before}, after: {args.after})\n")
    print("| tag | run | seeds | " + " | ".join(f"step {s}" for s in args.steps) + " |")
    print("|---|---|---|" + "---|" * len(args.steps))
    for tag in TAGS:
        for label, seeds in runs.items():
            have = [s for s in seeds.values() if tag in s]
            if not have:
                print(f"| {tag} | {label} | 0 | " + " | ".join("not logged" for _ in args.steps) + " |")
                continue
            cells = [statistics.mean(value_at(s[tag], step) for s in have) for step in args.steps]
            print(f"| {tag} | {label} | {len(have)} | " + " | ".join(f"{c:.3g}" for c in cells) + " |")

    if args.out is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(TAGS), figsize=(5 * len(TAGS), 3.6))
        for ax, tag in zip(axes, TAGS):
            for label, style, colour in (("before", "--", "tab:grey"), ("after", "-", "tab:blue")):
                for i, (_seed, series) in enumerate(sorted(runs[label].items())):
                    if tag in series:
                        steps, values = zip(*series[tag])
                        ax.plot(steps, values, style, color=colour, alpha=0.8, label=label if i == 0 else None)
            ax.set_title(tag)
            ax.set_xlabel("step")
            ax.legend()
        fig.suptitle(f"codebook health of the {args.arm} arm: one line per seed")
        fig.tight_layout()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out, dpi=110)
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
