"""One float32 numeric policy: ``pacofr fit`` applies the config's ``float32_matmul_precision`` before any class is
built, and ``bench/train_step.py`` applies the same key of the config it times through the same function."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from config_files import DEMO, RUNS, SIZE_FILES, config_args, merged_yaml

from pacofr.cli import PacofrCLI
from pacofr.data.datamodule import PretrainDataModule
from pacofr.training import numerics
from pacofr.training.module import PretrainModule
from pacofr.training.numerics import apply_numerics, numerics_state

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def restore_torch_flags() -> Iterator[None]:
    """The flags are process-wide: leave them as found for the tests that run after."""
    precision, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    yield
    torch.set_float32_matmul_precision(precision)
    torch.backends.cudnn.allow_tf32 = cudnn


@pytest.mark.parametrize(("precision", "tf32"), [("highest", False), ("high", True), ("medium", True)])
def test_apply_sets_matmuls_and_cudnn_together(precision: str, tf32: bool):
    state = apply_numerics(precision)
    assert torch.get_float32_matmul_precision() == precision
    assert torch.backends.cudnn.allow_tf32 is tf32  # torch's default (on) would contradict "highest"
    assert state == {"float32_matmul_precision": precision, "cuda_matmul_allow_tf32": tf32, "cudnn_allow_tf32": tf32}


def test_default_is_highest_and_bad_values_are_refused():
    torch.set_float32_matmul_precision("high")
    assert apply_numerics(None)["float32_matmul_precision"] == "highest"
    assert numerics.config_precision({}) == "highest" and numerics.config_precision({"x": 1}) == "highest"
    with pytest.raises(ValueError, match="float32_matmul_precision must be one of highest, high, medium"):
        apply_numerics("tf32")


class RecordingCLI(PacofrCLI):
    """Records the policy in force when LightningCLI starts building the model, data module and trainer."""

    seen: list[dict] = []

    def instantiate_classes(self) -> None:
        RecordingCLI.seen.append(numerics_state())
        super().instantiate_classes()


def build_cli(root: Path, *extra: str) -> PacofrCLI:
    args = [*config_args(DEMO), "--data.root", str(root), "--data.num_workers", "0", *extra]
    return RecordingCLI(PretrainModule, PretrainDataModule, run=False, args=args)


def test_fit_applies_the_policy_before_the_model_is_built(tmp_path, make_shards):
    root = make_shards(tmp_path / "faces", {"train": [8], "val": [4]}, size=64)
    RecordingCLI.seen.clear()
    torch.set_float32_matmul_precision("high")  # a stale process-wide setting: the config's default must win
    cli = build_cli(root, "--run_dir", str(tmp_path / "a"))
    assert RecordingCLI.seen[-1]["float32_matmul_precision"] == "highest"
    assert RecordingCLI.seen[-1]["cudnn_allow_tf32"] is False
    assert cli.config.float32_matmul_precision == "highest"  # tiny.yaml's key, saved into the run's config.yaml

    cli = build_cli(root, "--run_dir", str(tmp_path / "b"), "--float32_matmul_precision", "medium")
    assert RecordingCLI.seen[-1]["float32_matmul_precision"] == "medium"
    assert torch.get_float32_matmul_precision() == "medium" and isinstance(cli.model, PretrainModule)


def test_every_pretrain_run_names_the_policy():
    for path in SIZE_FILES:  # the size files hold it for every run composed on them
        value = yaml.safe_load(path.read_text()).get("float32_matmul_precision")
        assert value in numerics.PRECISIONS, (path.name, value)
    for name, files in RUNS.items():
        assert merged_yaml(files).get("float32_matmul_precision") in numerics.PRECISIONS, name


class Applied(Exception):
    pass


def test_bench_applies_the_configs_policy_through_the_same_function(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    from bench import train_step

    assert train_step.apply_numerics is numerics.apply_numerics  # no switch of the bench's own
    calls: list[str] = []

    def record(precision: str) -> dict:
        calls.append(precision)
        raise Applied  # the bench stops here: what it would time is decided

    monkeypatch.setattr(train_step, "apply_numerics", record)
    config = merged_yaml(DEMO)
    config["float32_matmul_precision"] = "medium"
    path = tmp_path / "medium.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setattr(sys, "argv", ["train_step.py"])
    for argv, expected in [
        (["--config", *map(str, DEMO)], "highest"),
        (["--config", str(path)], "medium"),
        (["--config", str(path), "--float32-matmul-precision", "high"], "high"),  # the same key, as a flag
    ]:
        with pytest.raises(Applied):
            train_step.main([*argv, "--device", "cpu", "--no-compile"])
        assert calls[-1] == expected
