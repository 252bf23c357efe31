"""The config compositions, for tests: the pretraining runs ``configs/pretrain`` composes (each run's config files in
``pacofr fit --config`` order: a size file, a method file and, for the demo, ``demo.yaml``) and the eval jobs of
``configs/eval`` (a protocol base, then the benchmark's file), as ``--config`` arguments or as merged YAML."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = REPO / "configs" / "pretrain"
METHODS = ("mae", "mae_spatial", "fsfm", "pacofr", "pacofr_full")
SIZE_FILES = (PRETRAIN / "vit_b16.yaml", PRETRAIN / "tiny.yaml")
METHOD_FILES = tuple(PRETRAIN / "method" / f"{m}.yaml" for m in METHODS)
# `make pretrain`: ViT-Ti on CPU, PaCo-FR, its codebook at that size
DEMO = (PRETRAIN / "tiny.yaml", PRETRAIN / "method" / "pacofr.yaml", PRETRAIN / "demo.yaml")
# every shipped run, by the name of the single file it once was
RUNS: dict[str, tuple[Path, ...]] = {
    "demo_tiny": DEMO,
    **{f"{m}_vit_b16": (PRETRAIN / "vit_b16.yaml", PRETRAIN / "method" / f"{m}.yaml") for m in METHODS},
}


def config_args(files: Iterable[Path]) -> list[str]:
    """``--config A --config B ...``: the files as ``pacofr fit`` arguments, in order."""
    return [arg for f in files for arg in ("--config", str(f))]


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` merged into a copy of ``base``: nested mappings key by key, anything else (lists too) replaced."""
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def merged_yaml(files: Iterable[Path]) -> dict[str, Any]:
    """The files' YAML merged in order, as ``pacofr fit`` merges its ``--config`` files (a later ``class_path`` keeps
    the earlier ``init_args``; the CLI drops those the new class does not accept, this keeps them)."""
    config: dict[str, Any] = {}
    for f in files:
        config = merge(config, yaml.safe_load(Path(f).read_text()) or {})
    return config


EVAL = REPO / "configs" / "eval"


def eval_files(task: str) -> tuple[Path, Path]:
    """The files of ``pacofr eval`` for ``task``: the protocol base its config names on its ``# Base:`` line (the line
    slurm/eval.sbatch reads), then ``configs/eval/<task>.yaml``."""
    path = EVAL / f"{task}.yaml"
    found = re.search(r"^# Base: (configs/eval/base/\w+\.yaml)", path.read_text(), flags=re.M)
    assert found, f"{path.name} names no protocol base (a '# Base: configs/eval/base/<name>.yaml' line)"
    return REPO / found.group(1), path
