"""``pacofr``: one entry for every job.

- ``pacofr fit|validate --config configs/pretrain/<size>.yaml --config configs/pretrain/method/<method>.yaml``
  ``[--run_dir DIR]``: pretraining through LightningCLI (typed signatures of PretrainModule, its objective and
  PretrainDataModule).
- further subcommands (eval, export, ...) are added by their modules in ``EXTRA_COMMANDS``.
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
import warnings
from pathlib import Path

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.environments import SLURMEnvironment

from pacofr.callbacks.checkpoint import StepCheckpoint
from pacofr.checkpointing.preemption import PreemptionHandler, catch_early_preemption_signal
from pacofr.checkpointing.resolve import CheckpointUnreadable, checkpoint_global_step, find_checkpoints, resolve_resume
from pacofr.checkpointing.rng import RNGState
from pacofr.cli_parser import OneLineErrorParser, exit_with_error, nearest_option, refuse_moved_keys
from pacofr.data.format import read_manifest
from pacofr.errors import UserError, run_reporting_user_errors
from pacofr.logs import show_info_logs
from pacofr.run_folder import write_run_info
from pacofr.training.numerics import DEFAULT_MATMUL_PRECISION, MatmulPrecision, apply_numerics

LIGHTNING_COMMANDS = ("fit", "validate")
# --ckpt_path values that name no local file (Lightning's own names, a model registry, a remote URL)
LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry", "s3", "gs", "http", "https")
# name -> "module:function" taking argv (list[str]) and returning an exit code
EXTRA_COMMANDS: dict[str, str] = {
    "eval": "pacofr.eval.cli:main",
    "export": "pacofr.export:main",
    "checkpoint": "pacofr.checkpointing.cli:main",
    "study": "pacofr.study.cli:main",
}


HELP = """usage: pacofr COMMAND [options]   (pacofr COMMAND --help for its options)

  fit          pretrain from a size and a method config: pacofr fit --config configs/pretrain/vit_b16.yaml
               --config configs/pretrain/method/<method>.yaml
  validate     the validation loss of a checkpoint on a dataset
  eval         score an encoder on a benchmark task, or the synthetic suite (--suite synth)
  export       write a checkpoint's encoder as timm-loadable safetensors
  checkpoint   checkpoint tools: consolidate a sharded (FSDP) checkpoint, resolve what --resume auto picks
  study        compare methods: arms x seeds -> pretraining -> probes -> one table (docs/study.md)

A user error (wrong path, damaged file, misspelt option) is one line and exit code 2; --traceback shows more."""


class RunFolderConfig(SaveConfigCallback):
    """Saves the resolved config as ``<run_dir>/config.yaml`` (overwritten on every restart, so a
    requeued job never crashes on an existing file) and ``run_info.json`` (code and data versions)."""

    def __init__(self, *args, **kwargs):
        kwargs["save_to_log_dir"] = False
        kwargs["overwrite"] = True
        super().__init__(*args, **kwargs)

    def save_config(self, trainer, pl_module, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        run_dir = Path(trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, run_dir / "config.yaml", skip_none=False, overwrite=True, multifile=False)
        extra = {"stage": stage, "world_size": trainer.world_size}
        datamodule = getattr(trainer, "datamodule", None)
        describe = getattr(datamodule, "describe_data", None)
        if callable(describe):
            extra["data"] = describe()
        write_run_info(run_dir, extra)


class PacofrCLI(LightningCLI):
    """LightningCLI with a ``--run_dir``: logs (TensorBoard, ``<run_dir>/tb``), checkpoints
    (``<run_dir>/checkpoints``) and the resolved config all live in that one folder, whose name stays
    the same across restarts so TensorBoard curves continue."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--run_dir", type=str, default="runs/default", help="Folder of this run (logs, checkpoints, config)."
        )
        parser.add_argument(
            "--resume",
            type=str,
            default="none",
            help="none: start fresh (refused when <run_dir> already holds checkpoints); auto: newest complete "
            "checkpoint of <run_dir>/checkpoints (a no-op on a first run; the SLURM default); or a checkpoint path. "
            "Use this rather than --ckpt_path.",
        )
        parser.add_argument(
            "--float32_matmul_precision",
            type=MatmulPrecision,
            default=DEFAULT_MATMUL_PRECISION,
            help="float32 matmuls and cuDNN: highest (IEEE, no TF32; keeps the codebook's float32 distances exact) | "
            "high (TF32) | medium. Applied before the model is built (pacofr.training.numerics).",
        )
        # the data's geometry is given once, on the data side; the objective takes it from there
        parser.link_arguments("data.image_size", "model.objective.init_args.img_size")
        parser.link_arguments("data.masker.init_args.patch_size", "model.objective.init_args.patch_size")
        parser.link_arguments("data.masker.init_args.mask_ratio", "model.objective.init_args.mask_ratio")
        parser.add_lightning_class_args(StepCheckpoint, "checkpoint")
        parser.add_lightning_class_args(PreemptionHandler, "preemption")
        parser.add_lightning_class_args(RNGState, "rng_state")
        parser.set_defaults(
            {
                "checkpoint.filename": "step{step:08d}",
                "checkpoint.auto_insert_metric_name": False,
                "checkpoint.every_n_train_steps": 1000,
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": -1,
                # a requeued run re-saving a step overwrites it (atomically) instead of writing step...-v1.ckpt
                "checkpoint.enable_version_counter": False,
            }
        )

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        argv = list(sys.argv[1:] if args is None else args)
        # keys that moved (model.codebook_warmup_steps -> the objective's): one line naming the new place, from
        # the command line or a --config file, before jsonargparse reads them
        refuse_moved_keys(f"pacofr {argv[0]}" if argv and argv[0] in LIGHTNING_COMMANDS else "pacofr", argv)
        super().parse_arguments(parser, args)
        # checked before seeding, building or writing anything: a wrong --data.root is one line, no stray files
        subcommand = self.config.get("subcommand")
        self.check_inputs(self.config[subcommand] if subcommand else self.config)

    def check_inputs(self, config) -> None:
        """What the run reads, checked before seeding, building or writing anything: the dataset's manifest,
        shards and splits, and an explicit ``--resume`` file. A wrong path is one line and leaves no files."""
        self._check_dataset(config)
        if config.get("resume") not in (None, "none", "auto"):
            resolve_resume(config.resume, config.run_dir)  # an explicit path: must be a readable checkpoint
        ckpt_path = config.get("ckpt_path")
        if ckpt_path is not None and config.get("resume", "none") != "none":
            raise UserError(f"give either --resume ({config.resume}) or --ckpt_path ({ckpt_path}), not both")
        if ckpt_path is not None and str(ckpt_path).split(":")[0] not in LIGHTNING_CKPT_NAMES:
            # an explicit file, read now (Lightning would read its hyper-parameters next, and a damaged file
            # would end the command in a traceback)
            if not Path(ckpt_path).exists():
                raise FileNotFoundError(f"--ckpt_path {ckpt_path}: no such checkpoint")
            try:
                checkpoint_global_step(ckpt_path)
            except CheckpointUnreadable as exc:
                raise UserError(f"--ckpt_path {exc}") from exc
        if self.config.get("subcommand") == "fit" and config.get("resume", "none") == "none" and not config.ckpt_path:
            self._refuse_used_run_folder(config)

    @staticmethod
    def _refuse_used_run_folder(config) -> None:
        """A fresh start into a run folder that already holds checkpoints would overwrite them one by one."""
        dirpath = Path(config.checkpoint.dirpath or Path(config.run_dir) / "checkpoints")
        found, _ = find_checkpoints(dirpath)
        if found:
            raise UserError(
                f"run folder {config.run_dir} already holds checkpoints (newest: {found[-1].path.name}, step "
                f"{found[-1].global_step}); continue that run with --resume auto, or start a new one with another "
                "--run_dir"
            )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        apply_numerics(config.get("float32_matmul_precision"))  # before the model is built or compiled
        run_dir = Path(config.run_dir)
        config.trainer.default_root_dir = str(run_dir)
        if config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = str(run_dir / "checkpoints")
        plugins = config.trainer.plugins
        if plugins is None:
            # atomic checkpoint files (temp + rename), unless the config chose its own IO
            plugins = config.trainer.plugins = [{"class_path": "pacofr.checkpointing.atomic_io.AtomicCheckpointIO"}]
        has_environment = isinstance(plugins, list) and any("Environment" in str(p) for p in plugins)
        if SLURMEnvironment.detect() and isinstance(plugins, list) and not has_environment:
            # our PreemptionHandler requeues; Lightning's own SLURM requeue would save in the signal handler
            plugins.append(
                {
                    "class_path": "lightning.pytorch.plugins.environments.SLURMEnvironment",
                    "init_args": {"auto_requeue": False},
                }
            )
        if self.subcommand == "fit":
            self._resolve_resume(config)
        if config.trainer.logger in (None, True):
            config.trainer.logger = {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(run_dir), "name": "", "version": "tb", "default_hp_metric": False},
            }

    @staticmethod
    def _check_dataset(config) -> None:
        data = config.get("data")
        if data is None or data.get("root") is None:
            return
        manifest = read_manifest(data.root)
        for split in (data.get("train_split", "train"), data.get("val_split")):
            if split is not None:
                manifest.split(split)

    @staticmethod
    def _resolve_resume(config) -> None:
        """``--resume`` -> ``ckpt_path`` (decided from the checkpoint folder alone: the same on every rank)."""
        if config.resume != "none" and config.ckpt_path is not None:
            raise UserError(f"give either --resume ({config.resume}) or --ckpt_path ({config.ckpt_path}), not both")
        if config.ckpt_path is None:
            # None (a fresh start) is safe under SLURM: Lightning substitutes "hpc" only when an hpc_ckpt_N file
            # exists in the run folder, and nothing writes one (Lightning's auto-requeue is off)
            path = resolve_resume(config.resume, config.checkpoint.dirpath)
            config.ckpt_path = str(path) if path is not None else None
        if config.ckpt_path is not None and config.get("weights_only") is None:
            config.weights_only = True  # pacofr checkpoints hold tensors and plain values only
        sharded = config.ckpt_path is not None and Path(config.ckpt_path).is_dir()
        if sharded and "fsdp" not in str(config.trainer.strategy).lower():
            # only FSDP reads a folder of shards; anything else needs the one-file form first
            raise UserError(
                f"{config.ckpt_path} is a sharded (FSDP) checkpoint and this run does not use FSDP. Make one file "
                f"with `pacofr checkpoint consolidate {config.ckpt_path} --out CONSOLIDATED.ckpt` and resume "
                "with `--resume CONSOLIDATED.ckpt`, or keep the FSDP preset (configs/trainer/fsdp*.yaml)."
            )


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(fragment in record.getMessage() for fragment in self.fragments)


NOISE_WARNINGS = (
    "LightningCLI's args parameter",  # pacofr hands its own argv over on purpose
    "The `srun` command is available on your system but is not used",  # pacofr's sbatch scripts use srun
    "Your `IterableDataset` has `__len__` defined",  # the shard stream sizes every worker's lane itself
    "`isinstance(treespec, LeafSpec)` is deprecated",  # Lightning's own call into torch's pytree
)
NOISE_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


def silence_known_noise() -> None:
    """Lines Lightning prints on every run that say nothing about this one (a cloud-logger advert, hints that
    do not apply to how pacofr starts it)."""
    for message in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message))
    for name in NOISE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages("litlogger"))


def run_lightning(argv: list[str]) -> int:
    catch_early_preemption_signal()  # a USR1 during start-up must not kill the job before the handler exists
    show_info_logs()
    silence_known_noise()
    from pacofr.data.datamodule import PretrainDataModule
    from pacofr.training.module import PretrainModule

    PacofrCLI(
        PretrainModule,
        PretrainDataModule,
        save_config_callback=RunFolderConfig,
        parser_class=OneLineErrorParser,
        args=argv,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in EXTRA_COMMANDS:
        module_name, func = EXTRA_COMMANDS[argv[0]].split(":")
        command = getattr(importlib.import_module(module_name), func)
        return run_reporting_user_errors(f"pacofr {argv[0]}", lambda rest: int(command(rest) or 0), argv[1:])
    if not argv or argv[0] in ("-h", "--help") or argv[0] in LIGHTNING_COMMANDS:
        if not argv or argv[0] in ("-h", "--help"):
            print(HELP)
            return 0
        return run_reporting_user_errors(f"pacofr {argv[0]}", run_lightning, argv)
    commands = [*LIGHTNING_COMMANDS, *EXTRA_COMMANDS]
    close = nearest_option(argv[0], commands)
    hint = f"did you mean {close}? " if close else ""
    exit_with_error("pacofr", f"unknown command {argv[0]!r} ({hint}commands: {', '.join(commands)}; pacofr --help)")


if __name__ == "__main__":
    sys.exit(main())
