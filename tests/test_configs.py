"""Every YAML in configs/ parses against the typed signatures, and every key carries a comment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pacofr.cli import PacofrCLI
from pacofr.data.datamodule import PretrainDataModule
from pacofr.eval.cli import EvalCLI, make_cli
from pacofr.eval.tasks import TASKS
from pacofr.training.module import PretrainModule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRETRAIN = sorted((CONFIGS / "pretrain").glob("*.yaml"))
TRAINER = sorted((CONFIGS / "trainer").glob("*.yaml"))
ALL_YAML = sorted(CONFIGS.rglob("*.yaml"))


class ParseOnlyCLI(PacofrCLI):
    """Parses and validates like `pacofr fit`, without building the model or touching the disk."""

    def check_inputs(self, config) -> None:
        pass  # the configs name cluster paths (data/faces) that do not exist here

    def instantiate_classes(self) -> None:
        pass

    def _run_subcommand(self, subcommand: str) -> None:
        pass


def parse(*configs: Path):
    args = ["fit"]
    for c in configs:
        args += ["--config", str(c)]
    cli = ParseOnlyCLI(PretrainModule, PretrainDataModule, args=args, run=True)
    return cli.config["fit"]


def test_there_are_configs():
    names = {p.name for p in PRETRAIN}
    assert {"mae_vit_b16.yaml", "fsfm_vit_b16.yaml", "pacofr_vit_b16.yaml", "demo_tiny.yaml"} <= names
    assert {"ddp.yaml", "fsdp.yaml"} <= {p.name for p in TRAINER}


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_key_is_commented(path: Path):
    """litgpt-style: a reader learns each setting from the file itself."""
    yaml.safe_load(path.read_text())  # valid YAML
    uncommented = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if re.match(r"^-?\s*[A-Za-z_][\w.]*\s*:", stripped) and "#" not in line:
            # a key that only opens a nested block is explained by its children... unless it has none
            uncommented.append(f"{lineno}: {line}")
    parents_ok = [u for u in uncommented if not re.search(r":\s*$", u)]
    assert not parents_ok, f"{path.name}: keys without a comment:\n" + "\n".join(parents_ok)


@pytest.mark.parametrize("path", PRETRAIN, ids=lambda p: p.name)
def test_pretrain_config_parses(path: Path):
    config = parse(path)
    objective = config.model.objective.init_args  # the data's geometry, linked (given once, on the data side)
    assert objective.mask_ratio == config.data.masker.init_args.mask_ratio
    assert objective.patch_size == config.data.masker.init_args.patch_size
    assert objective.img_size == config.data.image_size
    assert config.trainer.max_steps > 0


@pytest.mark.parametrize("trainer", TRAINER, ids=lambda p: p.name)
def test_trainer_presets_parse_with_a_method(trainer: Path):
    config = parse(CONFIGS / "pretrain" / "pacofr_vit_b16.yaml", trainer)
    assert config.trainer.strategy is not None


def test_baselines_differ_only_where_intended():
    mae, fsfm, paco = (parse(CONFIGS / "pretrain" / f"{m}_vit_b16.yaml") for m in ("mae", "fsfm", "pacofr"))
    assert mae.data.masker.class_path.endswith("RandomMasker") and mae.model.objective.class_path.endswith(".MAE")
    assert fsfm.data.masker.class_path.endswith("StructuredMasker")
    assert fsfm.model.objective.class_path.endswith(".FSFM") and fsfm.model.objective.init_args.covered_weight > 0
    paco_args = paco.model.objective.init_args
    assert paco.model.objective.class_path.endswith(".PaCoFR")
    assert paco_args.spatial_weight > 0 and paco_args.incubation_epochs > 0 and paco_args.replace_ratio > 0
    assert fsfm.model.objective.init_args.id_weight > 0 and fsfm.data.masker.init_args.per_batch_component
    for key in ("encoder_size", "img_size", "patch_size", "mask_ratio", "decoder_depth", "decoder_dim"):
        assert mae.model.objective.init_args[key] == fsfm.model.objective.init_args[key] == paco_args[key], key
    for key in ("base_lr", "weight_decay", "warmup_steps", "betas"):
        assert mae.model[key] == fsfm.model[key] == paco.model[key], key


class ParseOnlyEvalCLI(EvalCLI):
    """Parses and validates like `pacofr eval`, without loading the checkpoint or the data."""

    def instantiate_classes(self) -> None:
        pass


@pytest.mark.parametrize("task", sorted(TASKS))
def test_eval_config_parses(task: str):
    """Every benchmark task has configs/eval/<task>.yaml, and it parses with the eval CLI's parser."""
    path = CONFIGS / "eval" / f"{task}.yaml"
    args = ["--config", str(path), "--model.encoder_ckpt", "runs/x/checkpoints/last.ckpt", "--data.root", "data/x"]
    config = make_cli(args, ParseOnlyEvalCLI).config
    assert config.model.task == config.data.task == task  # linked
    assert config.data.img_size == config.model.img_size
    assert config.model.mode in ("probe", "finetune")
