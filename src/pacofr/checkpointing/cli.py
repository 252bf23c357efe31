"""``pacofr checkpoint``: checkpoint tools.

- ``pacofr checkpoint consolidate SHARDED_DIR --out FILE [--weights_only]``: sharded folder -> one file.
- ``pacofr checkpoint resolve CHECKPOINT_DIR``: print what ``--resume auto`` would continue from (and why).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from pacofr.checkpointing.consolidate import consolidate
from pacofr.checkpointing.resolve import find_checkpoints, resolve_resume
from pacofr.cli_parser import OneLineArgumentParser


def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(prog="pacofr checkpoint", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cons = sub.add_parser("consolidate", help="sharded (FSDP) checkpoint folder -> one checkpoint file")
    cons.add_argument("sharded_dir")
    cons.add_argument("--out", required=True, help="the single checkpoint file to write")
    cons.add_argument("--weights_only", action="store_true", help="drop optimiser, loop and callback state")
    cons.add_argument(
        "--optimizer_keys",
        choices=("positional", "names"),
        default="positional",
        help="positional: optimiser state as torch.optim/DDP save it (resume with DDP); names: FSDP's layout",
    )
    res = sub.add_parser("resolve", help="which checkpoint --resume auto picks in a checkpoint folder")
    res.add_argument("checkpoint_dir")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "consolidate":
        out = consolidate(args.sharded_dir, args.out, args.weights_only, args.optimizer_keys)
        print(f"consolidated {args.sharded_dir} -> {out}")
        return 0
    if not Path(args.checkpoint_dir).is_dir():  # a typo, not a run that has not saved yet
        raise NotADirectoryError(f"no checkpoint folder at {args.checkpoint_dir}")
    found, problems = find_checkpoints(args.checkpoint_dir)
    for info in found:
        print(f"{info.global_step:>10d}  {info.kind:<8s}  {info.path}")
    for problem in problems:
        print(f"{'unreadable':>10s}  {problem}")
    chosen = resolve_resume("auto", args.checkpoint_dir)
    print(f"resume auto -> {chosen if chosen is not None else 'none (start from scratch)'}")
    return 0
