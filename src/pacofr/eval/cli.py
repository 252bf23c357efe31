"""``pacofr eval``: score a pretrained encoder on one benchmark task, or on a whole suite.

- ``pacofr eval --config configs/eval/base/<protocol>.yaml --config configs/eval/<task>.yaml --model.encoder_ckpt CKPT``
  ``--data.root DIR``:
  LightningCLI over :class:`EvalModule` and :class:`EvalDataModule` (``data.task`` and ``data.img_size``
  follow ``model.task`` and ``model.img_size``), then :func:`run_eval` (train the head, test). Writes
  ``results/<task>.json`` beside the checkpoint, TensorBoard scalars under ``results/tb/<task>``, and
  prints the primary metric per split.
- ``pacofr eval --suite synth --model.encoder_ckpt CKPT [--data.root data/synth-demo] [overrides]``:
  every task of the suite with the suite's defaults (the encoder's pretraining image size unless
  ``--model.img_size`` is given), one table on stdout, ``results/synth_suite.json`` beside the task
  JSONs, and each task's Lightning output in ``results/logs/<task>.log``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import lightning as L
import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from pacofr.cli_parser import OneLineArgumentParser, OneLineErrorParser
from pacofr.errors import UserError, run_reporting_user_errors

from .backbone import file_sha256, spec_of
from .data import OCCLUDED_SUFFIX, EvalDataModule
from .feature_probe import synth_chance
from .module import EvalModule, run_eval, write_json_atomic
from .tasks import get_task

log = logging.getLogger("pacofr.eval")
LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")
DESCRIPTION = (
    "Score a pretrained encoder on a benchmark task (README: Evaluating a checkpoint; layouts: docs/datasets.md). "
    "`pacofr eval --suite synth --model.encoder_ckpt CKPT` runs the whole synthetic suite."
)


class EvalCLI(LightningCLI):
    """LightningCLI for one task: links the data module's task and image size to the model's, and puts
    the TensorBoard logs beside the results JSON (``<results>/tb/<task>/version_N``)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.task", "data.task")
        parser.link_arguments("model.img_size", "data.img_size")

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        # open every split before the Trainer exists: a missing, damaged or refused file is one line on stderr,
        # not Lightning's start-up lines (accelerator, SLURM hint, logger tips) followed by it
        max_epochs = self.config_init.get("trainer", {}).get("max_epochs")
        self.datamodule.check_readable(self.datamodule.has_train and max_epochs != 0)
        return super().instantiate_trainer(**kwargs)

    def before_instantiate_classes(self) -> None:
        config = self.config
        get_task(config.model.task)  # an unknown task fails here with the list of known ones
        results = results_dir(config.model.results_dir, config.model.encoder_ckpt)
        if config.trainer.default_root_dir is None:
            config.trainer.default_root_dir = str(results)
        precision = str(config.trainer.precision or "")
        on_cpu = config.trainer.accelerator == "cpu" or (
            config.trainer.accelerator == "auto" and not torch.cuda.is_available()
        )
        if on_cpu and ("16" in precision):
            # the configs ask for bf16-mixed (GPU); on a CPU that is slow and changes nothing worth having
            log.debug("pacofr eval: precision %s -> 32-true on CPU", precision)
            config.trainer.precision = "32-true"
        if config.trainer.logger in (None, True):
            config.trainer.logger = {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(results / "tb"), "name": config.model.task, "default_hp_metric": False},
            }


def results_dir(explicit: str | None, encoder_ckpt: str | None) -> Path:
    """Where ``EvalModule`` writes ``<task>.json``: ``explicit``, else ``results/`` beside the checkpoint."""
    if explicit:
        return Path(explicit)
    if encoder_ckpt:
        return Path(encoder_ckpt).resolve().parent / "results"
    return Path("results")


def make_cli(args: Sequence[str], cli_class: type[EvalCLI] = EvalCLI) -> EvalCLI:
    """Parse ``args`` and build trainer, model and data (``run_eval`` is left to the caller)."""
    # "Seed set to 0" would be the first stderr line of every job, a one-line user error included (the seed is in
    # the results JSON's config)
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        # `pacofr eval ...` hands its own argv over explicitly; Lightning would warn that sys.argv is set too
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return cli_class(
            EvalModule,
            EvalDataModule,
            save_config_callback=None,  # the resolved config goes into results/<task>.json instead
            trainer_defaults={"enable_checkpointing": False},  # the product is the scores, not the head
            seed_everything_default=0,
            parser_kwargs={"description": DESCRIPTION, "prog": "pacofr eval"},
            parser_class=OneLineErrorParser,
            args=list(args),
            run=False,
        )


def run_task(args: Sequence[str]) -> tuple[dict[str, Any], Path]:
    """One evaluation job: returns the results dict and the path of the JSON written."""
    cli = make_cli(args)
    results = run_eval(cli.trainer, cli.model, cli.datamodule)
    return results, cli.model.results_path()


# --- suites -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Suite:
    """Tasks run one after the other on one checkpoint; ``defaults`` (dotted keys) apply to every task
    before the user's own arguments, so any of them can be overridden on the command line."""

    tasks: tuple[str, ...]
    defaults: dict[str, Any] = field(default_factory=dict)
    data_hint: str = ""


SUITES: dict[str, Suite] = {
    # Sized for a CPU demo: a frozen encoder (probe), 256 training faces, 4 epochs; every test split also
    # scored with occluders (the occlusion drop). configs/eval/base/synth.yaml with configs/eval/synth_*.yaml hold
    # the same settings.
    "synth": Suite(
        tasks=("synth_parsing", "synth_landmarks", "synth_pose", "synth_verification"),
        defaults={
            "model.mode": "probe",
            "model.head_dim": 64,
            "model.lr": 3.0e-3,
            "data.root": "data/synth-demo",
            "data.batch_size": 16,
            "data.num_workers": 1,
            "data.max_train_samples": 256,
            "data.occlusion_area": 0.25,
            "trainer.max_epochs": 4,
            "trainer.accelerator": "auto",
            "trainer.devices": 1,
            "trainer.precision": "32-true",
            "trainer.enable_progress_bar": False,
            "trainer.enable_model_summary": False,
            "trainer.log_every_n_steps": 5,
        },
        data_hint="make data-demo  (or: pacofr-prep synth --out DIR)",
    ),
}


def defaults_as_args(defaults: dict[str, Any]) -> list[str]:
    args = []
    for key, value in defaults.items():
        args += [f"--{key}", "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)]
    return args


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Send everything a task prints (Lightning's result tables and info lines, warnings) to ``path``,
    so the suite's terminal shows one table. Exceptions still propagate to the caller."""
    path.parent.mkdir(parents=True, exist_ok=True)
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    saved = [logger.handlers[:] for logger in loggers]
    with open(path, "w") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        handler = logging.StreamHandler(fh)  # Lightning's own handlers hold the real stderr
        try:
            for logger in loggers:
                logger.handlers = [handler]
            yield
        finally:
            for logger, handlers in zip(loggers, saved):
                logger.handlers = handlers


def suite_parser() -> OneLineArgumentParser:
    """The options ``pacofr eval`` reads itself (the rest are the task's, parsed by :class:`EvalCLI`)."""
    parser = OneLineArgumentParser(prog="pacofr eval", add_help=False, allow_abbrev=False)
    parser.add_argument("--suite", choices=sorted(SUITES), default=None, help="run every task of this suite")
    parser.add_argument("--model.task", dest="task", default=None, help=argparse.SUPPRESS)
    return parser


class ParseOnlyEvalCLI(EvalCLI):
    """Parses and checks the arguments like a task run, and builds nothing."""

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


def parse_config(args: Sequence[str]) -> Any:
    """The resolved config of ``args`` (configs, defaults, command line) as a task run would see it; a bad
    option is the one-line error, before anything is built or written."""
    return make_cli(args, ParseOnlyEvalCLI).config


def run_suite(name: str, user_args: Sequence[str], out: TextIO | None = None) -> dict[str, Any]:
    """Every task of suite ``name`` on the checkpoint in ``user_args``; prints one table and writes
    ``<results>/<name>_suite.json``. Returns that summary."""
    out = out or sys.stdout  # looked up now: the caller may have redirected it
    if name not in SUITES:
        raise UserError(f"unknown suite {name!r}; choose one of {sorted(SUITES)}")
    suite = SUITES[name]
    # the user's arguments parsed once, as the tasks will see them, before any task runs or writes: a misspelt
    # option is one line here rather than inside the first task's log
    unset_size = defaults_as_args({**suite.defaults, "model.img_size": 0})  # 0: the user gave none
    config = parse_config([*unset_size, *user_args, "--model.task", suite.tasks[0]])
    ckpt = config.model.encoder_ckpt
    if not ckpt:
        raise UserError("--suite needs --model.encoder_ckpt CKPT (a pretraining .ckpt or export)")
    if not Path(ckpt).is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    encoder = spec_of(ckpt, trust_checkpoint=bool(config.model.trust_checkpoint))
    root = config.data.root
    if root and not (Path(root) / "_info.json").is_file():
        raise FileNotFoundError(f"no synthetic dataset at {root} (missing _info.json): run {suite.data_hint}")
    img_size = int(config.model.img_size or encoder.img_size)

    base = defaults_as_args({**suite.defaults, "model.img_size": img_size})
    results_folder = results_dir(config.model.results_dir, ckpt)
    rows, tasks, started = [], {}, time.perf_counter()
    for i, task in enumerate(suite.tasks, 1):
        print(f"[{i}/{len(suite.tasks)}] {task} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        with output_to(results_folder / "logs" / f"{task}.log"):
            # the suite's task last: it wins over a --config that names one
            results, path = run_task([*base, *user_args, "--model.task", task])
        seconds = time.perf_counter() - t0
        tasks[task] = {**summarise(results), "results_file": str(path), "seconds": round(seconds, 1)}
        rows.append(tasks[task])
    if name == "synth" and root:
        # no features at all: the training labels' mean / majority (every table carries its chance row)
        max_train = config.data.max_train_samples
        chance = synth_chance(root, img_size, int(max_train) if max_train is not None else None)
        for row in rows:
            row["chance"] = chance.get(row["task"])
    total = time.perf_counter() - started
    summary = {
        "suite": name,
        "checkpoint": str(ckpt),
        "checkpoint_sha256": file_sha256(ckpt),
        "encoder": encoder.model_name,
        "img_size": img_size,
        "tasks": tasks,
        "seconds_total": round(total, 1),
        "arguments": list(user_args),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    suite_json = Path(rows[0]["results_file"]).parent / f"{name}_suite.json"
    write_json_atomic(suite_json, summary)
    mode = config.model.mode
    print(f"\n{name} suite: {ckpt} ({encoder.model_name} at {img_size} px, {mode})", file=out)
    print(suite_table(rows), file=out)
    print(f"total {total:.0f} s; results: {suite_json} (+ one <task>.json each)", file=out)
    return summary


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """The headline of one task's results: primary metric per split, its occlusion drop, a few extras."""
    spec = get_task(results["task"])
    primary = results["primary_metric"]
    metrics = results["metrics"]
    clean = [s for s in results["splits"] if not s.endswith(OCCLUDED_SUFFIX)]
    split = clean[0]
    extras = {
        k: v
        for k, v in metrics[split].items()
        if k != primary and not k.startswith(("f1/", "fr@")) and k.split("_")[0] != primary
    }
    return {
        "task": results["task"],
        "split": split,
        "primary_metric": primary,
        "higher_is_better": spec.higher_is_better,
        "value": metrics[split].get(primary),
        "occluded": metrics.get(split + OCCLUDED_SUFFIX, {}).get(primary),
        "occlusion_drop": results["occlusion_drop"].get(split),
        "extras": extras,
        "epochs": results["epochs"],
    }


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def suite_table(rows: Sequence[dict[str, Any]]) -> str:
    headers = ["task", "metric", "split", "score", "chance", "occluded", "drop", "epochs", "time", "details"]
    body = []
    for r in rows:
        better = "higher" if r["higher_is_better"] else "lower"
        details = ", ".join(f"{k} {v:.4g}" for k, v in r["extras"].items())
        body.append(
            [
                r["task"],
                f"{r['primary_metric']} ({better} better)",
                r["split"],
                _fmt(r["value"]),
                _fmt(r.get("chance")),
                _fmt(r["occluded"]),
                _fmt(r["occlusion_drop"]),
                str(r["epochs"]),
                f"{r['seconds']:.0f} s",
                details,
            ]
        )
    return format_table(headers, body)


def task_table(results: dict[str, Any]) -> str:
    """One row per evaluated split: the primary metric and, for clean splits, the occlusion drop."""
    primary = results["primary_metric"]
    rows = []
    for split in results["splits"]:
        drop = results["occlusion_drop"].get(split)
        rows.append([split, _fmt(results["metrics"][split].get(primary)), _fmt(drop)])
    return format_table(["split", primary, "occlusion drop"], rows)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``pacofr eval``; user errors (a bad option, a missing or refused file) raise, and ``pacofr.cli`` turns
    them into the one line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    known, rest = suite_parser().parse_known_args(argv)
    if known.suite is not None:
        if known.task is not None:
            suite_parser().error("--suite chooses the tasks itself; drop --model.task")
        run_suite(known.suite, rest)
        return 0
    results, path = run_task(argv)
    print(f"\n{results['task']} ({results['mode']}): {results['checkpoint']}")
    print(task_table(results))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_user_errors("pacofr eval", main, sys.argv[1:]))
