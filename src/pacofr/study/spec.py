"""A method study as data: arms x seeds, read from one commented YAML (``configs/study/<name>.yaml``).

A *cell* is one (arm, seed): one pretraining run (``pacofr fit``) and one probe of its encoder, written to
``<root>/<study>/<arm>/seed<k>/`` (see docs/study.md). Every arm starts from the same ``base_config`` (one
pretraining config, or a list of them composed in order as ``pacofr fit --config A --config B`` composes them:
``[configs/pretrain/tiny.yaml, configs/pretrain/method/pacofr.yaml, ...]``) and the same ``common`` overrides
(steps, batch, schedule), so compute and data are equal; only the arm's own ``overrides`` differ.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pacofr.eval.feature_probe import ProbeSettings

DEFAULT_ROOT = "runs/study"


class StudyConfigError(ValueError):
    """The study YAML is malformed (one line says what and where)."""


@dataclass(frozen=True)
class Arm:
    name: str
    label: str
    pretrain: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Cell:
    """One (arm, seed) of a study; ``folder`` holds its run, its probe result and its log."""

    study: str
    arm: Arm
    seed: int
    folder: Path

    @property
    def run_dir(self) -> Path:
        return self.folder / "run"

    @property
    def result_path(self) -> Path:
        return self.folder / "result.json"

    @property
    def log_path(self) -> Path:
        return self.folder / "pretrain.log"

    @property
    def name(self) -> str:
        return f"{self.arm.name}/seed{self.seed}"


@dataclass(frozen=True)
class StudySpec:
    name: str
    base_config: tuple[str, ...]  # the pretraining config files every arm starts from, in `--config` order
    data_root: str
    seeds: tuple[int, ...]
    common: dict[str, Any]
    probe: ProbeSettings
    arms: tuple[Arm, ...]
    reference_arm: str  # the first of ``reference_arms``: the table's main comparison
    root: Path = Path(DEFAULT_ROOT)
    source: str = ""
    reference_arms: tuple[str, ...] = ()  # every arm the table pairs the others with (empty: reference_arm)

    @property
    def references(self) -> tuple[str, ...]:
        return self.reference_arms or (self.reference_arm,)

    @property
    def folder(self) -> Path:
        return self.root / self.name

    def cells(self) -> list[Cell]:
        """Seed-major order (every arm of seed 0 first), so a partial grid already pairs arms."""
        return [
            Cell(self.name, arm, seed, self.folder / arm.name / f"seed{seed}")
            for seed in self.seeds
            for arm in self.arms
        ]

    def arm(self, name: str) -> Arm:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise StudyConfigError(f"no arm {name!r} in study {self.name!r}; arms: {[a.name for a in self.arms]}")

    def fit_override_layers(self, cell: Cell) -> tuple[dict[str, Any], dict[str, Any]]:
        """The dotted ``pacofr fit`` keys of one cell as two config layers, applied in order on the base config:
        the common ones, then the arm's and the seed's. In two layers because an arm may switch the objective
        (``model.objective.class_path``): the common settings apply to the base objective first, and the switch
        keeps those the new objective accepts (jsonargparse drops the others), e.g. the codebook arms'
        ``incubation_steps`` for an MAE arm."""
        own = {
            **cell.arm.overrides,
            "seed_everything": cell.seed,
            "data.seed": cell.seed,
            "data.root": str(Path(self.data_root).resolve()),
        }
        return dict(self.common), own

    def fit_overrides(self, cell: Cell) -> dict[str, Any]:
        """The dotted ``pacofr fit`` keys of one cell, merged: common, then the arm's, then the seed's."""
        common, own = self.fit_override_layers(cell)
        return {**common, **own}

    def cell_key(self, cell: Cell) -> str:
        """A digest of everything that decides a cell's result: a result with another key is stale."""
        # one file: the key a single-file base_config always had; several: their paths and texts in order
        one = len(self.base_config) == 1
        payload = {
            "base_config": self.base_config[0] if one else list(self.base_config),
            "base_config_text": _read_text(self.base_config[0]) if one else [_read_text(p) for p in self.base_config],
            "pretrain": cell.arm.pretrain,
            "overrides": self.fit_overrides(cell) if cell.arm.pretrain else {"seed": cell.seed},
            "probe": self.probe.__dict__,
            "data_root": str(Path(self.data_root).resolve()),  # data/x and /abs/data/x are one dataset
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _mapping(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise StudyConfigError(f"{where} must be a mapping, got {type(raw).__name__}")
    return dict(raw)


def _arms(raw: Any) -> tuple[Arm, ...]:
    arms = []
    for name, body in _mapping(raw, "arms").items():
        body = _mapping(body, f"arms.{name}")
        unknown = set(body) - {"label", "pretrain", "overrides"}
        if unknown:
            raise StudyConfigError(f"arms.{name}: unknown keys {sorted(unknown)} (label, pretrain, overrides)")
        arms.append(
            Arm(
                name=str(name),
                label=str(body.get("label", name)),
                pretrain=bool(body.get("pretrain", True)),
                overrides=_mapping(body.get("overrides"), f"arms.{name}.overrides"),
            )
        )
    if not arms:
        raise StudyConfigError("a study needs at least one arm")
    return tuple(arms)


def _probe_settings(raw: dict[str, Any]) -> ProbeSettings:
    try:
        return ProbeSettings.from_dict(raw)
    except (TypeError, ValueError) as err:
        raise StudyConfigError(f"probe: {err}") from err


def load_study(
    path: str | Path, quick: bool = False, root: str | Path = DEFAULT_ROOT, data_root: str | None = None
) -> StudySpec:
    """Read ``configs/study/<name>.yaml``; ``quick`` applies its ``quick:`` block (arms subset, seeds,
    common and probe overrides, name)."""
    path = Path(path)
    raw = _read_study(path)
    known = {"name", "base_config", "data_root", "seeds", "common", "probe", "arms", "quick"}
    known |= {"reference_arm", "reference_arms"}
    unknown = set(raw) - known
    if unknown:
        raise StudyConfigError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    for key in ("name", "base_config", "data_root", "arms"):
        if key not in raw:
            raise StudyConfigError(f"{path}: missing key {key!r}")
    arms = _arms(raw["arms"])
    name, seeds = str(raw["name"]), raw.get("seeds", [0, 1, 2])
    common, probe = _mapping(raw.get("common"), "common"), _mapping(raw.get("probe"), "probe")
    references = _references(raw, arms)
    if quick:
        q = _mapping(raw.get("quick"), "quick")
        name = str(q.get("name", f"{name}_quick"))
        seeds = q.get("seeds", seeds[:1])
        common = {**common, **_mapping(q.get("common"), "quick.common")}
        probe = {**probe, **_mapping(q.get("probe"), "quick.probe")}
        wanted = q.get("arms", [a.name for a in arms[:2]])
        by_name = {a.name: a for a in arms}
        missing = [a for a in wanted if a not in by_name]
        if missing:
            raise StudyConfigError(f"quick.arms names unknown arms {missing}")
        arms = tuple(by_name[a] for a in wanted)
        references = [r for r in references if r in wanted] or [arms[0].name]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise StudyConfigError(f"seeds must be a non-empty list of integers, got {seeds!r}")
    stray = [r for r in references if r not in {a.name for a in arms}]
    if stray:
        raise StudyConfigError(f"reference_arm(s) {stray} not among the arms {[a.name for a in arms]}")
    return StudySpec(
        name=name,
        base_config=_base_config(raw["base_config"], path),
        data_root=str(data_root or raw["data_root"]),
        seeds=tuple(seeds),
        common=common,
        probe=_probe_settings(probe),
        arms=arms,
        reference_arm=references[0],
        root=Path(root),
        source=str(path),
        reference_arms=tuple(references),
    )


def _base_config(raw: Any, path: Path) -> tuple[str, ...]:
    """``base_config``: one path, or a non-empty list of paths composed in order (later files win key by key)."""
    paths = raw if isinstance(raw, list) else [raw]
    if not paths or not all(isinstance(p, str) and p for p in paths):
        raise StudyConfigError(f"{path}: base_config must be a config path or a non-empty list of them, got {raw!r}")
    return tuple(paths)


def _read_study(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The study YAML as a mapping, with ``extends: <parent study YAML>`` resolved: the parent's keys, then this
    file's on top; ``common`` and ``probe`` are merged key by key, and ``arms`` given as a list of names picks
    those of the parent's arms (a mapping defines arms as usual). The parent's ``quick`` block is not inherited.
    A relative parent path is read from the working directory (as ``base_config``), else beside this file."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise StudyConfigError(f"cannot read study config {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise StudyConfigError(f"{path} is not valid YAML: {err}") from err
    raw = _mapping(raw, str(path))
    if "extends" not in raw:
        if isinstance(raw.get("arms"), list):
            raise StudyConfigError(f"{path}: arms as a list of names needs `extends:` (a study to take them from)")
        return raw
    parent_path = Path(str(raw.pop("extends")))
    if not parent_path.is_absolute() and not parent_path.exists():
        parent_path = path.parent / parent_path
    if parent_path.resolve() in seen or parent_path.resolve() == path.resolve():
        raise StudyConfigError(f"{path}: `extends` loops through {parent_path}")
    parent = _read_study(parent_path, (*seen, path.resolve()))
    parent.pop("quick", None)
    merged = {**parent, **raw}
    for key in ("common", "probe"):
        merged[key] = {**_mapping(parent.get(key), f"{parent_path}: {key}"), **_mapping(raw.get(key), key)}
    if isinstance(raw.get("arms"), list):
        available = _mapping(parent.get("arms"), f"{parent_path}: arms")
        missing = [a for a in raw["arms"] if a not in available]
        if missing:
            raise StudyConfigError(f"{path}: arms {missing} are not arms of {parent_path} ({sorted(available)})")
        merged["arms"] = {name: available[name] for name in raw["arms"]}
    if "reference_arms" in raw and "reference_arm" not in raw:
        merged.pop("reference_arm", None)  # the child's list decides
    if "reference_arm" in raw and "reference_arms" not in raw:
        merged.pop("reference_arms", None)
    return merged


def _references(raw: dict[str, Any], arms: tuple[Arm, ...]) -> list[str]:
    """The arms the table pairs every other arm with: ``reference_arms: [mae, mae_parse]``, or the older
    ``reference_arm: mae`` (one arm; with both keys, it must be the list's first); the first arm when neither
    is given."""
    value = raw.get("reference_arms", raw.get("reference_arm", arms[0].name))
    names = value if isinstance(value, list) else [value]
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) < len(names):
        raise StudyConfigError(f"reference_arms must be a non-empty list of distinct arm names, got {value!r}")
    if "reference_arms" in raw and raw.get("reference_arm", names[0]) != names[0]:
        raise StudyConfigError(f"reference_arm {raw['reference_arm']!r} is not the first of reference_arms {names}")
    return names
