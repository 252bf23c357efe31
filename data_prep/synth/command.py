"""``pacofr-prep synth``: write the embedded default dataset (procedural synthetic faces)."""

from __future__ import annotations

import argparse
import sys
import time

from pacofr.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "synth",
        help="draw procedural synthetic faces with exact parsing maps, landmarks and pose",
        description="Draw procedural synthetic faces (exact 19-class parsing maps, 5/68 landmarks, head pose, "
        "lighting, expressions, occluders) into pacofr-faces/1 shards. Same arguments -> byte-identical shards, "
        "whatever --workers. The val split holds whole identities.",
    )
    p.add_argument("--out", required=True, help="output folder (must not already hold a dataset)")
    p.add_argument("--n", type=int, required=True, help="number of faces")
    p.add_argument("--size", type=int, default=256, help="crop size in pixels (default 256)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="fraction of identities held out as val")
    p.add_argument("--shard-size", type=int, default=2000, help="samples per shard (default 2000)")
    p.add_argument("--identities", type=int, default=None, help="number of distinct people (default n // 8)")
    p.add_argument("--occluder-prob", type=float, default=0.25, help="chance a face gets an occluder")
    p.add_argument("--workers", type=int, default=1, help="processes (output identical for any count)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from data_prep.synth.generate import SynthConfig, write_dataset
    except ImportError as err:  # opencv comes with the `prep` extra
        raise UserError(f"missing dependency ({err}); install with: pip install 'pacofr[prep]'") from err

    try:
        cfg = SynthConfig(
            n=args.n,
            size=args.size,
            seed=args.seed,
            identities=args.identities,
            occluder_prob=args.occluder_prob,
            val_fraction=args.val_fraction,
        )
        if args.shard_size < 1 or args.workers < 1:
            raise ValueError("--shard-size and --workers must be >= 1")
    except ValueError as err:  # pacofr-prep prints it as the one error line
        raise UserError(str(err)) from err
    start = time.perf_counter()
    step = max(1, cfg.n // 20)

    def progress(done: int, total: int) -> None:
        if not args.quiet and (done % step == 0 or done == total):
            rate = done / max(time.perf_counter() - start, 1e-9)
            print(f"synth: {done}/{total} faces ({rate:.0f}/s)", file=sys.stderr, flush=True)

    try:
        manifest = write_dataset(args.out, cfg, shard_size=args.shard_size, workers=args.workers, progress=progress)
    except FileExistsError as err:
        raise UserError(str(err)) from err
    counts = ", ".join(f"{name}={info.num_samples}" for name, info in manifest.splits.items())
    print(f"synth: wrote {counts} ({cfg.num_identities} identities) to {args.out}")
    return 0
