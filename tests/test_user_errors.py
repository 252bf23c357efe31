"""Every user error of a pacofr command is one line on stderr with exit code 2, and leaves nothing behind;
``--traceback`` shows the full traceback instead; a misspelt option suggests the nearest one."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from config_files import DEMO, config_args, eval_files

from pacofr.cli import main

REPO = Path(__file__).resolve().parents[1]
LFW = eval_files("lfw")  # the verification protocol (configs/eval/base/verification.yaml), then lfw.yaml
LFW_ARGS = config_args(LFW)
sys.path.insert(0, str(REPO / "tests" / "eval"))
from eval_layouts import write_pretraining_checkpoint, write_verification_bin  # noqa: E402


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def faces(tmp_path, make_shards) -> Path:
    return make_shards(tmp_path / "faces", {"train": [8], "val": [4]}, size=64)


def fit_args(root: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["fit", *config_args(DEMO), "--data.root", str(root), "--run_dir", str(run_dir), *extra]


def test_missing_dataset_is_one_line_and_writes_nothing(tmp_path, capsys):
    err = one_line_error(capsys, fit_args(tmp_path / "nothing", tmp_path / "run"))
    assert "no manifest _info.json" in err and "pacofr-prep synth" in err
    assert not (tmp_path / "run").exists()  # no stray tb/ folder


def test_corrupt_manifest(tmp_path, faces, capsys):
    (faces / "_info.json").write_text("{not json")
    assert "not valid JSON" in one_line_error(capsys, fit_args(faces, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_shard_listed_but_missing(tmp_path, faces, capsys):
    info = json.loads((faces / "_info.json").read_text())
    (faces / info["splits"]["train"]["filenames"][0]).unlink()
    err = one_line_error(capsys, fit_args(faces, tmp_path / "run"))
    assert info["splits"]["train"]["filenames"][0] in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["missing", "random", "truncated"])
def test_bad_resume_checkpoint(tmp_path, faces, capsys, kind):
    path = tmp_path / "bad.ckpt"
    if kind == "random":
        path.write_bytes(os.urandom(2000))
    elif kind == "truncated":
        write_pretraining_checkpoint(tmp_path / "good.ckpt", img_size=32)
        path.write_bytes((tmp_path / "good.ckpt").read_bytes()[:3000])
    err = one_line_error(capsys, fit_args(faces, tmp_path / "run", "--resume", str(path)))
    assert str(path) in err
    assert "weights_only" not in err  # torch's advice to load untrusted code is wrong for a damaged file
    assert ("no such checkpoint" in err) == (kind == "missing")
    assert not (tmp_path / "run").exists()


def test_misspelt_option_suggests_the_nearest(tmp_path, faces, capsys):
    with pytest.raises(SystemExit) as exit_info:  # the parser's own exit, before anything is built
        main(fit_args(faces, tmp_path / "run", "--model.base_lrr", "0.1"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("pacofr fit: error: unrecognized arguments"), err
    assert "did you mean --model.base_lr?" in err


def test_export_of_a_garbage_file(tmp_path, capsys):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    err = one_line_error(capsys, ["export", "--ckpt", str(garbage), "--out", str(tmp_path / "out")])
    assert "not a complete PyTorch checkpoint" in err and "trust_checkpoint" not in err
    assert not (tmp_path / "out").exists()


class _RunsShell:
    def __reduce__(self):
        return (os.system, ("true",))


def test_eval_refuses_a_malicious_bin_in_one_line_and_writes_nothing(tmp_path, capsys):
    ckpt = tmp_path / "run" / "last.ckpt"
    ckpt.parent.mkdir()
    write_pretraining_checkpoint(ckpt, img_size=32)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "lfw.bin").write_bytes(pickle.dumps(([_RunsShell()], [True]), protocol=2))
    argv = ["eval", *LFW_ARGS, "--model.encoder_ckpt", str(ckpt)]
    argv += ["--data.root", str(tmp_path / "data"), "--trainer.accelerator", "cpu", "--data.num_workers", "0"]
    err = one_line_error(capsys, argv)
    assert "system" in err
    assert not (tmp_path / "run" / "results").exists()  # no empty TensorBoard run, no results folder


def test_a_checkpoint_that_would_run_code_is_refused_naming_what_it_holds(tmp_path, faces, capsys):
    import torch

    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _RunsShell()}, ckpt)
    for argv in (
        ["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "out")],
        fit_args(faces, tmp_path / "run", "--resume", str(ckpt)),
    ):
        err = one_line_error(capsys, argv)
        assert "refused" in err and "system`" in err, err  # the global it refused, by name
        assert "weights_only" not in err, err  # never the advice to switch the check off
    assert not (tmp_path / "out").exists()


def test_consolidate_given_a_file_is_one_line(tmp_path, capsys):
    import torch

    single = tmp_path / "last.ckpt"
    torch.save({"global_step": 3}, single)
    err = one_line_error(capsys, ["checkpoint", "consolidate", str(single), "--out", str(tmp_path / "one.ckpt")])
    assert "not a folder" in err and "last.ckpt" in err
    assert not (tmp_path / "one.ckpt").exists()


def test_eval_on_an_empty_data_root_prints_only_its_one_line(tmp_path):
    ckpt = tmp_path / "run" / "last.ckpt"
    ckpt.parent.mkdir()
    write_pretraining_checkpoint(ckpt, img_size=32)
    (tmp_path / "empty").mkdir()
    cmd = [sys.executable, "-m", "pacofr.cli", "eval", *LFW_ARGS]
    cmd += ["--model.encoder_ckpt", str(ckpt), "--data.root", str(tmp_path / "empty")]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    # the whole stderr: no seed line, accelerator summary, SLURM hint or logger tip before the error
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith("pacofr eval: error: missing verification file lfw.bin"), proc.stderr
    assert proc.stdout == "" and not (tmp_path / "run" / "results").exists()


def test_traceback_flag_shows_the_full_traceback(tmp_path, capsys, monkeypatch):
    # in-process: without the flag the error is one line; with it (or PACOFR_TRACEBACK=1) the error itself is
    # raised, so the interpreter prints its full traceback
    from pacofr.data.format import ManifestError

    monkeypatch.chdir(tmp_path)
    args = fit_args(tmp_path / "nothing", tmp_path / "run")
    assert "add --traceback for the full traceback" in one_line_error(capsys, args)
    with pytest.raises(ManifestError):
        main([*args, "--traceback"])
    monkeypatch.setenv("PACOFR_TRACEBACK", "1")
    with pytest.raises(ManifestError):
        main(args)


def test_fresh_start_into_a_used_run_folder_is_refused(tmp_path, faces, capsys):
    import torch

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"global_step": 300}, run / "checkpoints" / "step00000300.ckpt")
    err = one_line_error(capsys, fit_args(faces, run))
    assert "already holds checkpoints" in err and "step 300" in err and "--resume auto" in err
    assert sorted(p.name for p in run.rglob("*")) == ["checkpoints", "step00000300.ckpt"]  # nothing written


def test_help_says_what_each_subcommand_does(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "eval", "export", "checkpoint", "study"):
        assert any(line.strip().startswith(command + " ") for line in out.splitlines()), command


def test_eval_precision_follows_the_device(tmp_path):
    from pacofr.eval.cli import make_cli

    ckpt = tmp_path / "last.ckpt"
    write_pretraining_checkpoint(ckpt, img_size=32)
    write_verification_bin(tmp_path / "lfw.bin", n_pairs=2)  # the data is checked before the trainer is built
    args = [*LFW_ARGS, "--model.encoder_ckpt", str(ckpt)]
    args += ["--data.root", str(tmp_path), "--trainer.accelerator", "cpu", "--model.results_dir", str(tmp_path / "r")]
    assert "bf16" in LFW[0].read_text()  # the protocol asks for bf16-mixed; on a CPU it becomes 32-true
    cli = make_cli(args)
    assert cli.trainer.precision == "32-true"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--in", "/nonexistent", "--out", "OUT"], "no input at /nonexistent"),
        (["merge", "--out", "OUT", "/nonexistent"], "unrecognized arguments: /nonexistent"),
        (["inspect", "/nonexistent"], "no manifest _info.json"),
        (["synth", "--out", "OUT", "--n", "-5"], "n must be >= 1"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["synth", "--out", "OUT", "--n", "4", "--sise", "64"], "did you mean --size?"),
    ],
)
def test_prep_errors_are_one_line(tmp_path, capsys, argv, message):
    from data_prep.cli import main as prep

    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    try:
        code = prep(argv)
    except SystemExit as exit_info:  # the parser's own exit
        code = exit_info.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists(), "nothing written on bad input"
