"""Every YAML in configs/ parses against the typed signatures, and every key carries a comment. The shipped runs
are compositions (``pacofr fit --config <size> --config <method>``, ``pacofr eval --config <base> --config <task>``):
each resolves, through the real parser, to its recorded values, and no part repeats what another holds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from config_files import DEMO, METHOD_FILES, RUNS, SIZE_FILES, config_args, eval_files, merged_yaml

from pacofr.cli import PacofrCLI
from pacofr.data.datamodule import PretrainDataModule
from pacofr.eval.cli import EvalCLI, make_cli
from pacofr.eval.tasks import TASKS
from pacofr.training.module import PretrainModule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRETRAIN = sorted((CONFIGS / "pretrain").glob("*.yaml"))  # the size files and the demo's layer; methods in method/
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
    assert all(p.is_file() for p in (*SIZE_FILES, *METHOD_FILES, *DEMO))
    assert {p.name for p in PRETRAIN} == {"vit_b16.yaml", "tiny.yaml", "demo.yaml"}  # sizes + the demo's layer
    assert {p.name for p in (CONFIGS / "pretrain" / "method").glob("*.yaml")} == {p.name for p in METHOD_FILES}
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


# --- pretraining: a size file + a method file (+ demo.yaml for the demo), as `pacofr fit --config A --config B`

# What each shipped run resolves to through the real parser (recorded when the single files became compositions;
# `bench/step_fingerprint.py` showed their training steps bitwise equal to the single files')
EXPECTED: dict[str, dict[str, object]] = {
    "pacofr_vit_b16": {
        "run_dir": "runs/pacofr_vit_b16",
        "model.objective.class_path": "pacofr.objectives.PaCoFR",
        "model.objective.init_args.encoder_size": "base",
        "model.objective.init_args.decoder_depth": 8,
        "model.objective.init_args.decoder_dim": 512,
        "model.objective.init_args.img_size": 224,
        "model.objective.init_args.num_codes": 1024,
        "model.objective.init_args.code_dim": 256,
        "model.objective.init_args.replace_ratio": 0.15,
        "model.objective.init_args.incubation_epochs": 1.0,
        "model.objective.init_args.codebook_warmup_steps": 50,
        "model.base_lr": 1.5e-4,
        "model.warmup_steps": 5000,
        "model.compile": True,
        "data.batch_size": 256,
        "data.masker.class_path": "pacofr.masking.structured_masker.StructuredMasker",
        "data.masker.init_args.mask_ratio": 0.75,
        "trainer.precision": "bf16-mixed",
        "trainer.gradient_clip_val": 3.0,
        "trainer.max_steps": 100000,
        "float32_matmul_precision": "highest",
    },
    "pacofr_full_vit_b16": {
        "run_dir": "runs/pacofr_full_vit_b16",
        "model.objective.class_path": "pacofr.objectives.PaCoFRFull",
        "model.objective.init_args.encoder_size": "base",
        "model.objective.init_args.mask_token_share": 0.0,
        "model.objective.init_args.mask_ratio": 0.5,
        "model.objective.init_args.codebook_warmup_steps": 50,
        "data.masker.init_args.mask_ratio": 0.5,
        "trainer.precision": "bf16-mixed",
        "trainer.gradient_clip_val": 3.0,
    },
    "mae_vit_b16": {
        "run_dir": "runs/mae_vit_b16",
        "model.objective.class_path": "pacofr.objectives.MAE",
        "model.objective.init_args.encoder_size": "base",
        "model.objective.init_args.decoder_depth": 8,
        "data.masker.class_path": "pacofr.masking.random_masker.RandomMasker",
        "data.masker.init_args.mask_ratio": 0.75,
        "trainer.precision": "bf16-mixed",
        "trainer.gradient_clip_val": 3.0,
    },
    "mae_spatial_vit_b16": {
        "run_dir": "runs/mae_spatial_vit_b16",
        "model.objective.class_path": "pacofr.objectives.MAEParse",
        "model.objective.init_args.encoder_size": "base",
        "model.objective.init_args.spatial_weight": 0.1,
        "model.objective.init_args.spatial_centroid_weight": 1.0,
        "model.objective.init_args.prior_warmup_steps": 50,
        "data.masker.class_path": "pacofr.masking.random_masker.RandomMasker",
        "data.masker.init_args.mask_ratio": 0.75,
        "trainer.precision": "bf16-mixed",
        "trainer.gradient_clip_val": 3.0,
    },
    "fsfm_vit_b16": {
        "run_dir": "runs/fsfm_vit_b16",
        "model.objective.class_path": "pacofr.objectives.FSFM",
        "model.objective.init_args.encoder_size": "base",
        "model.objective.init_args.covered_weight": 0.007,
        "model.objective.init_args.id_weight": 0.1,
        "model.objective.init_args.id_hidden_dim": 4096,
        "data.masker.init_args.per_batch_component": True,
        "trainer.precision": "bf16-mixed",
        "trainer.gradient_clip_val": 1.0,  # the method's own, over the size file's 3.0
    },
    "demo_tiny": {
        "run_dir": "runs/demo_tiny",
        "model.objective.class_path": "pacofr.objectives.PaCoFR",
        "model.objective.init_args.encoder_size": "tiny",
        "model.objective.init_args.decoder_depth": 2,
        "model.objective.init_args.decoder_dim": 128,
        "model.objective.init_args.img_size": 112,
        "model.objective.init_args.num_codes": 256,
        "model.objective.init_args.code_dim": 64,
        "model.objective.init_args.codebook_options": {
            "proto_hidden": 128, "belief_hidden": 128, "dead_after": 20, "reseed_every": 10,
        },
        "model.objective.init_args.codebook_warmup_steps": 5,
        "model.objective.init_args.replace_ratio": 0.15,
        "model.base_lr": 1.0e-2,
        "model.warmup_steps": 20,
        "model.compile": False,
        "data.root": "data/synth-demo",
        "data.masker.class_path": "pacofr.masking.structured_masker.StructuredMasker",
        "trainer.accelerator": "cpu",
        "trainer.precision": "32-true",
        "trainer.max_steps": 300,
        "trainer.gradient_clip_val": 3.0,
        "float32_matmul_precision": "highest",
    },
}  # fmt: skip


def flat(tree: dict, prefix: str = "") -> dict[str, object]:
    """Dotted leaf keys of a YAML mapping (a list is one leaf)."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_every_shipped_run_has_an_expectation():
    assert set(EXPECTED) == set(RUNS)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_composed_run_resolves_to_its_recorded_values(name: str):
    config = parse(*RUNS[name])
    resolved = {key: config[key] for key in EXPECTED[name]}
    assert resolved == EXPECTED[name]
    objective = config.model.objective.init_args  # the data's geometry, linked (given once, on the data side)
    assert objective.mask_ratio == config.data.masker.init_args.mask_ratio
    assert objective.patch_size == config.data.masker.init_args.patch_size
    assert objective.img_size == config.data.image_size
    assert config.trainer.max_steps > 0
    # the size file's encoder and decoder carry over the method's class_path: every one reaches the method
    size = yaml.safe_load(RUNS[name][0].read_text())
    for key, value in size["model"]["objective"]["init_args"].items():
        assert objective[key] == value, (name, key)


@pytest.mark.parametrize("method", METHOD_FILES, ids=lambda p: p.name)
def test_method_files_hold_only_the_method(method: Path):
    """A method file repeats no key of a size file: it names its class (replacing the size file's class_path by
    design), and a size key it sets is one the method changes (FSFM's clip 1.0), never a copy of the same value."""
    own = flat(yaml.safe_load(method.read_text()))
    assert "model.objective.class_path" in own
    for size in SIZE_FILES:
        theirs = flat(yaml.safe_load(size.read_text()))
        copied = {k for k in set(theirs) & set(own) if theirs[k] == own[k]}
        assert not copied, (method.name, size.name, sorted(copied))
        changed = set(theirs) & set(own) - {"model.objective.class_path"}
        assert changed <= {"trainer.gradient_clip_val"}, (method.name, size.name, sorted(changed))


def test_the_demo_layer_holds_only_what_the_demo_adds():
    """demo.yaml repeats no key of the tiny size file; of the method it follows it changes only the codebook's size
    and warmup, and the run folder."""
    demo = flat(yaml.safe_load(DEMO[2].read_text()))
    assert not set(demo) & set(flat(yaml.safe_load(DEMO[0].read_text())))
    method = flat(yaml.safe_load(DEMO[1].read_text()))
    assert {k.rsplit(".", 1)[-1] for k in set(demo) & set(method)} <= {
        "num_codes", "code_dim", "codebook_options", "codebook_warmup_steps", "run_dir",
    }  # fmt: skip


@pytest.mark.parametrize("trainer", TRAINER, ids=lambda p: p.name)
def test_trainer_presets_parse_with_a_method(trainer: Path):
    config = parse(*RUNS["pacofr_vit_b16"], trainer)
    assert config.trainer.strategy is not None
    assert config.model.objective.init_args.encoder_size == "base"  # the preset changes no model key


def test_baselines_differ_only_where_intended():
    mae, fsfm, paco = (parse(*RUNS[f"{m}_vit_b16"]) for m in ("mae", "fsfm", "pacofr"))
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


# --- eval: a protocol base (configs/eval/base/) + the benchmark's file, composed by `pacofr eval --config A --config B`

EVAL_BASES = sorted((CONFIGS / "eval" / "base").glob("*.yaml"))
EVAL_KEYS = (
    "model.mode", "model.img_size", "model.head_dim", "model.lr", "data.root", "data.batch_size",
    "data.occlusion_area", "data.max_train_samples", "trainer.max_epochs",
)  # fmt: skip
# What each task resolves to (recorded when the single files became compositions, every value unchanged)
EVAL_EXPECTED = {
    "300w": ("finetune", 224, 256, 0.0005, "data/300W", 32, 0.0, None, 60),
    "aflw19": ("finetune", 224, 256, 0.0005, "data/AFLW", 32, 0.0, None, 30),
    "aflw2000": ("finetune", 224, 128, 0.0005, "data/AFLW2000", 64, 0.0, None, 10),
    "agedb_30": ("probe", 224, 128, 0.001, "data/faces_emore", 64, 0.0, None, None),
    "celeba_attr": ("finetune", 224, 128, 0.0005, "data/celeba", 64, 0.0, None, 10),
    "celebamask_hq": ("finetune", 224, 256, 0.0005, "data/CelebAMask-HQ", 32, 0.0, None, 30),
    "cfp_fp": ("probe", 224, 128, 0.001, "data/faces_emore", 64, 0.0, None, None),
    "lapa": ("finetune", 224, 256, 0.0005, "data/LaPa", 32, 0.0, None, 30),
    "lfw": ("probe", 224, 128, 0.001, "data/faces_emore", 64, 0.0, None, None),
    "rafdb": ("finetune", 224, 128, 0.0005, "data/RAF-DB/basic", 32, 0.0, None, 30),
    "synth_landmarks": ("probe", 112, 64, 0.003, "data/synth-demo", 16, 0.25, 256, 4),
    "synth_parsing": ("probe", 112, 64, 0.003, "data/synth-demo", 16, 0.25, 256, 4),
    "synth_pose": ("probe", 112, 64, 0.003, "data/synth-demo", 16, 0.25, 256, 4),
    "synth_verification": ("probe", 112, 64, 0.003, "data/synth-demo", 16, 0.25, 256, 4),
    "wflw": ("finetune", 224, 256, 0.0005, "data/WFLW", 32, 0.0, None, 60),
}


def test_every_task_has_an_eval_expectation():
    assert set(EVAL_EXPECTED) == set(TASKS)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_eval_config_parses(task: str):
    """Every benchmark task has configs/eval/<task>.yaml naming its protocol base; the two compose, through the eval
    CLI's parser, to the recorded values."""
    args = [*config_args(eval_files(task)), "--model.encoder_ckpt", "runs/x/checkpoints/last.ckpt"]
    config = make_cli(args, ParseOnlyEvalCLI).config
    assert config.model.task == config.data.task == task  # linked
    assert config.data.img_size == config.model.img_size
    assert config.model.mode in ("probe", "finetune")
    assert tuple(config[key] for key in EVAL_KEYS) == EVAL_EXPECTED[task]
    # the precision the files ask for (the CLI itself turns bf16-mixed into 32-true on a CPU)
    precision = merged_yaml(eval_files(task))["trainer"]["precision"]
    assert precision == ("32-true" if task.startswith("synth_") else "bf16-mixed")


@pytest.mark.parametrize("task", sorted(TASKS))
def test_benchmark_files_hold_only_what_differs(task: str):
    """A benchmark's file sets no key to its base's value (no copies left), and sets its task."""
    base, own = (flat(yaml.safe_load(f.read_text())) for f in eval_files(task))
    assert own["model.task"] == task
    copied = {k for k in own if k in base and base[k] == own[k]}
    assert not copied, (task, sorted(copied))


def test_every_eval_base_is_used():
    used = {eval_files(task)[0] for task in TASKS}
    assert used == set(EVAL_BASES)
