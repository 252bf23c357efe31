"""``pacofr study``: a grid of arms x seeds -> pretraining -> probes -> one table (docs/study.md).

- ``pacofr study run --config configs/study/default.yaml [--quick]``: every cell in turn (finished cells are
  skipped, interrupted ones resume), then the table;
- ``pacofr study cell --config ... --index K``: cell K only (``SLURM_ARRAY_TASK_ID`` when no ``--index``);
- ``pacofr study aggregate --config ...``: the table, plots and HPARAMS page from the cells' JSONs;
- ``pacofr study list --config ... [--count]``: the cells, their index and state;
- ``pacofr study probe-check --config ... --arm A --seed K``: probe one finished cell's checkpoint again with
  other probe seeds and a larger probe budget, to show the probe is not what limits the table.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pacofr.cli_parser import OneLineArgumentParser
from pacofr.logs import show_info_logs

from .report import aggregate
from .runner import CellError, CellPreempted, format_probe_check, is_done, probe_check, run_cell
from .spec import DEFAULT_ROOT, StudyConfigError, StudySpec, load_study

USER_ERRORS = (StudyConfigError, CellError, FileNotFoundError)


def _parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(prog="pacofr study", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "run every cell (skipping finished ones), then write the table"),
        ("cell", "run one cell (a SLURM array task)"),
        ("aggregate", "write the table, plots and HPARAMS page from the finished cells"),
        ("list", "list the cells with their index and state"),
        ("probe-check", "re-probe one cell with other probe seeds and budgets (probe strength)"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--config", required=True, help="study YAML (configs/study/<name>.yaml)")
        p.add_argument("--quick", action="store_true", help="the config's quick grid (2 arms x 1 seed x a few steps)")
        p.add_argument("--root", default=DEFAULT_ROOT, help=f"folder of all studies (default {DEFAULT_ROOT})")
        p.add_argument("--data-root", default=None, help="dataset folder (default: the config's data_root)")
        if name == "run":
            p.add_argument("--force", action="store_true", help="redo finished cells (their checkpoints are reused)")
        if name == "cell":
            p.add_argument("--index", type=int, default=None, help="cell index (default: $SLURM_ARRAY_TASK_ID)")
            p.add_argument("--force", action="store_true", help="redo the cell even when finished")
        if name == "aggregate":
            p.add_argument("--plots-dir", default=None, help="where the PNGs go (default <study folder>/img)")
        if name == "list":
            p.add_argument("--count", action="store_true", help="print only the number of cells")
        if name == "probe-check":
            p.add_argument("--arm", required=True, help="arm of the cell to re-probe")
            p.add_argument("--seed", type=int, required=True, help="seed of the cell to re-probe")
            p.add_argument("--probe-seeds", type=int, nargs="+", default=[0, 1], help="probe seeds (faces drawn)")
            p.add_argument(
                "--budgets", type=int, nargs="+", default=None, help="probe training faces (default: 1x, 2x)"
            )
    return parser


def _cell_index(index: int | None, count: int) -> int:
    if index is None:
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        if task is None:
            raise StudyConfigError("pacofr study cell needs --index K (or run as a SLURM array task)")
        index = int(task)
    if not 0 <= index < count:
        raise StudyConfigError(f"cell index {index} is outside 0..{count - 1}")
    return index


def _print_table(spec: StudySpec, summary: dict) -> None:
    print((spec.folder / "table.md").read_text())
    print(f"table: {spec.folder / 'table.md'}; summary: {spec.folder / 'summary.json'}; plots: {summary['plots']}")
    print(f"TensorBoard HPARAMS: tensorboard --logdir {spec.folder / 'tb'}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    show_info_logs()
    try:
        spec = load_study(args.config, quick=args.quick, root=args.root, data_root=args.data_root)
        cells = spec.cells()
        if args.command == "list":
            if args.count:
                print(len(cells))
            else:
                for i, cell in enumerate(cells):
                    print(f"{i:3d}  {cell.name:32s}  {'done' if is_done(spec, cell) else 'todo'}  {cell.folder}")
            return 0
        if args.command == "probe-check":
            cell = next((c for c in cells if c.arm.name == args.arm and c.seed == args.seed), None)
            if cell is None:
                raise StudyConfigError(f"no cell {args.arm}/seed{args.seed} in study {spec.name}")
            budgets = args.budgets or [spec.probe.train_faces, 2 * spec.probe.train_faces]
            check = probe_check(spec, cell, args.probe_seeds, budgets)
            print(format_probe_check(check))
            return 0
        if args.command == "cell":
            run_cell(spec, cells[_cell_index(args.index, len(cells))], force=args.force)
            return 0
        if args.command == "run":
            for cell in cells:
                run_cell(spec, cell, force=args.force)
        summary = aggregate(spec, plots_dir=Path(args.plots_dir) if getattr(args, "plots_dir", None) else None)
        _print_table(spec, summary)
        return 0
    except CellPreempted as err:
        print(f"pacofr study: {err}", file=sys.stderr)
        return err.exit_code
    except USER_ERRORS as err:
        print(f"pacofr study: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
