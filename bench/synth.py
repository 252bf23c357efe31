"""Speed of the synthetic face generator on ONE core: render only, and render + encode + shard write.

    .venv/bin/python bench/synth.py [--size 256] [--n 200] [--sheet /tmp/synth_sheet.png]

Prints a small table and one JSON line (``{"bench": "synth", ...}``) with wall-clock rates and
CPU-time rates (``time.process_time``: this process's user + system time). On a shared machine the
wall clock also counts the time other processes held the core, so compare CPU figures, and compare
two versions by alternating runs under the same load (the load average is printed too).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import cv2  # noqa: E402

from data_prep.synth.generate import SynthConfig, render_sample, write_dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sheet", default="", help="also write a 16-face contact sheet PNG here")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    identities = max(1, args.n // 8)
    render_sample(args.seed, 0, args.size, identities)  # warm caches (noise tiles)

    # CPU time of this process as well as wall time: on a shared machine the wall clock also counts
    # the time other processes held the core.
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(args.n):
        render_sample(args.seed, i, args.size, identities)
    render_s, render_cpu = time.perf_counter() - start, time.process_time() - cpu

    with tempfile.TemporaryDirectory() as tmp:
        start, cpu = time.perf_counter(), time.process_time()
        write_dataset(Path(tmp) / "out", SynthConfig(n=args.n, size=args.size, seed=args.seed), workers=1)
        full_s, full_cpu = time.perf_counter() - start, time.process_time() - cpu

    result = {
        "bench": "synth",
        "size": args.size,
        "n": args.n,
        "cores": 1,
        "render_faces_per_s": round(args.n / render_s, 1),
        "render_ms_per_face": round(1000 * render_s / args.n, 2),
        "render_encode_write_faces_per_s": round(args.n / full_s, 1),
        "render_encode_write_ms_per_face": round(1000 * full_s / args.n, 2),
        "render_faces_per_cpu_s": round(args.n / render_cpu, 1),
        "render_cpu_ms_per_face": round(1000 * render_cpu / args.n, 2),
        "render_encode_write_faces_per_cpu_s": round(args.n / full_cpu, 1),
        "render_encode_write_cpu_ms_per_face": round(1000 * full_cpu / args.n, 2),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(f"{'stage':<24}{'faces/s':>10}{'ms/face':>10}{'faces/cpu-s':>13}{'cpu-ms/face':>13}")
    print(
        f"{'render':<24}{result['render_faces_per_s']:>10}{result['render_ms_per_face']:>10}"
        f"{result['render_faces_per_cpu_s']:>13}{result['render_cpu_ms_per_face']:>13}"
    )
    print(
        f"{'render+encode+write':<24}{result['render_encode_write_faces_per_s']:>10}"
        f"{result['render_encode_write_ms_per_face']:>10}{result['render_encode_write_faces_per_cpu_s']:>13}"
        f"{result['render_encode_write_cpu_ms_per_face']:>13}"
    )
    print(json.dumps(result))
    if args.sheet:
        from data_prep.synth.preview import contact_sheet

        sheet = contact_sheet(args.seed, 16, args.size)
        cv2.imwrite(args.sheet, cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        print(f"contact sheet: {args.sheet}")


if __name__ == "__main__":
    main()
