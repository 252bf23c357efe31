"""Helpers shared by the benchmark scripts: environment record, markdown tables, JSON lines, CPU memory."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# The pretraining runs configs/pretrain composes: each run's name (that of the single file it once was) -> its
# config files in `pacofr fit --config` order (the model size, the method, and for the demo PaCo-FR's codebook at
# the demo's size), relative to the repository.
PRETRAIN_RUNS: dict[str, tuple[str, ...]] = {
    "demo_tiny": ("configs/pretrain/tiny.yaml", "configs/pretrain/method/pacofr.yaml", "configs/pretrain/demo.yaml"),
    "fsfm_vit_b16": ("configs/pretrain/vit_b16.yaml", "configs/pretrain/method/fsfm.yaml"),
    "mae_vit_b16": ("configs/pretrain/vit_b16.yaml", "configs/pretrain/method/mae.yaml"),
    "mae_spatial_vit_b16": ("configs/pretrain/vit_b16.yaml", "configs/pretrain/method/mae_spatial.yaml"),
    "pacofr_full_vit_b16": ("configs/pretrain/vit_b16.yaml", "configs/pretrain/method/pacofr_full.yaml"),
    "pacofr_vit_b16": ("configs/pretrain/vit_b16.yaml", "configs/pretrain/method/pacofr.yaml"),
}


def merge_config(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` merged into a copy of ``base``: nested mappings key by key, anything else (lists too) replaced."""
    out = dict(base)
    for key, value in update.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge_config(out[key], value) if nested else value
    return out


def load_pretrain_config(paths: Sequence[str | Path]) -> dict[str, Any]:
    """The YAML of pretraining config files merged in order, as ``pacofr fit --config A --config B`` merges them
    (a relative path not found from the working directory is taken from the repository). A method file's
    ``class_path`` replaces the size file's and keeps its ``init_args``; the CLI then drops those the new class does
    not accept, this merge keeps them."""
    import yaml

    config: dict[str, Any] = {}
    for path in paths:
        path = Path(path)
        config = merge_config(config, yaml.safe_load((path if path.exists() else REPO / path).read_text()) or {})
    return config


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str | None = None) -> dict[str, Any]:
    """What a figure depends on: device, library versions, cores and machine load at the time."""
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "cores_available": available_cores(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    for name in ("torchvision", "lightning", "timm", "webdataset", "PIL"):
        module = sys.modules.get(name)
        if module is not None:
            env[name] = getattr(module, "__version__", "?")
    if device is not None:
        env["device"] = device
    if torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name()
    return env


def device_name(device: Any) -> str:
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_model()}, {available_cores()} cores)"


def emit_json(record: dict[str, Any]) -> None:
    """One JSON line on stdout (machine-readable; the tables are for people)."""
    print(json.dumps(record, sort_keys=False), flush=True)


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A GitHub markdown table of ``rows``; ``columns`` are (key, header) pairs."""
    header = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(row.get(k)) for k, _ in columns) + " |" for row in rows]
    return "\n".join([header, rule, *body])


# --- CPU memory (Linux /proc): the peak RSS can be reset per measurement --------------------------------
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the process's peak-RSS mark (VmHWM); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def rss_bytes() -> int | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def peak_rss_bytes() -> int | None:
    kib = _status_kib("VmHWM")
    return None if kib is None else kib * 1024
