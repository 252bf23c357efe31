"""One parser family, one error path: bad input to any ``pacofr`` or ``pacofr-prep`` subcommand (an unknown or
misspelt option, a wrong type, a missing file, a key a YAML config may not hold, a key that moved) is exactly one
line on stderr, ``<prog>: error: ...``, exit code 2, nothing on stdout and nothing written; a misspelling names
the nearest valid option, a moved key its new place.

Every case is its own process. ``pacofr``'s cases are forked from one process that imported ``pacofr.cli`` once
(the import costs seconds; each case then parses, fails and exits on its own, with its own stdout and stderr);
``pacofr-prep``'s cases are plain subprocesses (it starts without torch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pacofr.cli_parser import MOVED_KEYS, nearest_option

# a pretraining composition of the shape configs/pretrain has (a size file naming the MAE core, then a method file
# switching the class to PaCo-FR; a masker with init_args), written into every case's folder: the cases do not
# depend on configs/ itself, and the keys offered must be those of the class the LAST file names
CONFIG_FILES = {
    "size.yaml": """\
model:
  objective:
    class_path: pacofr.objectives.MaskedAutoencoder
    init_args:
      decoder_depth: 2
""",
    "method.yaml": """\
model:
  objective:
    class_path: pacofr.objectives.PaCoFR
    init_args:
      num_codes: 64
data:
  masker:
    class_path: pacofr.masking.structured_masker.StructuredMasker
    init_args:
      mask_ratio: 0.75
""",
}
CONFIG = ["--config", "size.yaml", "--config", "method.yaml"]

# id -> (argv, what the line says, files the case starts with)
PACOFR_CASES: dict[str, tuple[list[str], str, dict[str, str]]] = {
    "unknown-command": (["fitt"], "pacofr: error: unknown command 'fitt' (did you mean fit?", {}),
    "fit-misspelt-key": (
        ["fit", *CONFIG, "--model.mask_ration", "0.5"],
        "unrecognized arguments: --model.mask_ration 0.5 (did you mean --data.masker.init_args.mask_ratio?)",
        {},
    ),
    "fit-moved-key": (
        ["fit", *CONFIG, "--model.codebook_warmup_steps", "5"],
        "pacofr fit: error: model.codebook_warmup_steps moved to model.objective.init_args.codebook_warmup_steps "
        "(PaCo-FR's own setting)",
        {},
    ),
    "fit-moved-key-in-yaml": (
        ["fit", *CONFIG, "--config", "old.yaml"],
        "model.codebook_lr_scale moved to model.objective.init_args.codebook_lr_scale (PaCo-FR's own setting); "
        "old.yaml still sets",
        {"old.yaml": "model:\n  codebook_lr_scale: 2.0\n"},
    ),
    "fit-misspelt-init-arg-in-yaml": (
        ["fit", *CONFIG, "--config", "bad.yaml"],
        "pacofr.objectives.PaCoFR has no option model.objective.init_args.num_codez in bad.yaml "
        "(did you mean model.objective.init_args.num_codes?)",
        {"bad.yaml": "model:\n  objective:\n    init_args:\n      num_codez: 64\n"},
    ),
    "fit-wrong-type": (
        ["fit", *CONFIG, "--trainer.max_steps", "many"],
        "pacofr fit: error: --trainer.max_steps: expected int, got 'many'",
        {},
    ),
    "validate-missing-config": (
        ["validate", "--config", "missing.yaml"],
        "pacofr validate: error: --config: File does not exist",
        {},
    ),
    "eval-misspelt-option": (
        ["eval", "--model.task", "lfw", "--model.encoder_ckt", "x.ckpt"],
        "pacofr eval: error: unrecognized arguments: --model.encoder_ckt x.ckpt (did you mean --model.encoder_ckpt?)",
        {},
    ),
    "eval-unknown-suite": (
        ["eval", "--suite", "imagenet", "--model.encoder_ckpt", "x.ckpt"],
        "pacofr eval: error: argument --suite: invalid choice: 'imagenet'",
        {},
    ),
    "export-misspelt-option": (
        ["export", "--ckpt", "x.ckpt", "--ot", "y"],
        "pacofr export: error: the following arguments are required: --out (--ot: did you mean --out?)",
        {},
    ),
    "checkpoint-misspelt-command": (
        ["checkpoint", "consolidat", "x", "--out", "y"],
        "invalid choice: 'consolidat' (choose from 'consolidate', 'resolve') (did you mean consolidate?)",
        {},
    ),
    "checkpoint-consolidate-a-file": (
        ["checkpoint", "consolidate", "last.ckpt", "--out", "one.ckpt"],
        "pacofr checkpoint: error: last.ckpt: not a folder",
        {"last.ckpt": "not a folder of shards"},
    ),
    "study-misspelt-option": (
        ["study", "list", "--config", "study.yaml", "--cout"],
        "pacofr study list: error: unrecognized arguments: --cout (did you mean --count?)",
        {},
    ),
}

PREP_CASES: dict[str, tuple[list[str], str]] = {
    "command": (["sinth", "--out", "o"], "pacofr-prep: error: argument COMMAND: invalid choice: 'sinth'"),
    "synth": (["synth", "--out", "o", "--n", "4", "--sise", "64"], "unrecognized arguments: --sise 64 (did you mean"),
    "run": (["run", "--inpt", "raw", "--out", "o"], "pacofr-prep run: error: the following arguments are required"),
    "merge": (["merge", "--out", "o", "--num-chunks", "two"], "argument --num-chunks: invalid int value: 'two'"),
    "inspect": (["inspect", "o", "--sampels", "4"], "pacofr-prep inspect: error: unrecognized arguments: --sampels"),
    "demo-images": (["demo-images", "--out", "o", "--seeds", "1"], "(did you mean --seed?)"),
    "weights": (["weights", "fetch", "--dir", "w", "--models", "bisnet"], "invalid choice: 'bisnet'"),
}

# Runs each case in a child forked from one process that imported pacofr.cli: (id, folder, argv) in, exit codes out.
FORKING_RUNNER = r"""
import json, os, sys, traceback
cases, outputs = json.loads(sys.argv[1]), sys.argv[2]
from pacofr.cli import main
codes = {}
for name, folder, argv in cases:
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(folder)
            for fd, suffix in ((1, ".out"), (2, ".err")):
                os.dup2(os.open(os.path.join(outputs, name + suffix), os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            code = main(argv)
        except SystemExit as exit_info:  # what the interpreter does with it
            code = exit_info.code
            if code is not None and not isinstance(code, int):
                print(code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code or 0)
    codes[name] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps(codes))
"""


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} | {
        str(p.relative_to(folder)) + "/": b"" for p in folder.rglob("*") if p.is_dir()
    }


@pytest.fixture(scope="module")
def pacofr_results(tmp_path_factory) -> dict[str, tuple[int, str, str, Path, dict[str, bytes]]]:
    """id -> (exit code, stdout, stderr, the case's folder, its files before the run)."""
    root = tmp_path_factory.mktemp("cases")
    outputs = tmp_path_factory.mktemp("outputs")
    cases, before = [], {}
    for name, (argv, _, files) in PACOFR_CASES.items():
        folder = root / name
        folder.mkdir()
        for rel, text in {**CONFIG_FILES, **files}.items():
            (folder / rel).write_text(text)
        before[name] = files_under(folder)
        cases.append((name, str(folder), argv))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONWARNINGS", None)  # the warnings a user would see count as noise
    runner = subprocess.run(
        [sys.executable, "-c", FORKING_RUNNER, json.dumps(cases), str(outputs)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert runner.returncode == 0, runner.stderr[-4000:]
    assert runner.stderr == "", f"importing pacofr.cli printed on stderr:\n{runner.stderr[-4000:]}"
    codes = json.loads(runner.stdout.strip().splitlines()[-1])
    return {
        name: (
            codes[name],
            (outputs / f"{name}.out").read_text(),
            (outputs / f"{name}.err").read_text(),
            root / name,
            before[name],
        )
        for name in PACOFR_CASES
    }


def assert_one_error_line(code: int, out: str, err: str, prog: str, message: str) -> None:
    lines = err.splitlines()
    assert code == 2, f"exit code {code}; stderr:\n{err[-3000:]}"
    assert len(lines) == 1, f"{len(lines)} stderr lines:\n{err[-3000:]}"
    said_by = lines[0].split(": error: ", 1)[0]  # the command, or its subcommand that was given
    assert ": error: " in lines[0] and (said_by == prog or said_by.startswith(prog + " ")), lines[0]
    assert message in lines[0], lines[0]
    assert out == "", out


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the cases are forked from one process")
@pytest.mark.parametrize("case", list(PACOFR_CASES))
def test_pacofr_bad_input_is_one_line_and_writes_nothing(pacofr_results, case):
    code, out, err, folder, before = pacofr_results[case]
    argv = PACOFR_CASES[case][0]
    prog = "pacofr" if case == "unknown-command" else f"pacofr {argv[0]}"
    assert_one_error_line(code, out, err, prog, PACOFR_CASES[case][1])
    assert files_under(folder) == before, "a rejected command wrote files"


@pytest.mark.parametrize("case", list(PREP_CASES))
def test_prep_bad_input_is_one_line_and_writes_nothing(tmp_path, case):
    argv, message = PREP_CASES[case]
    env = {**os.environ}
    env.pop("PYTHONWARNINGS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "data_prep.cli", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    prog = "pacofr-prep" if case == "command" else f"pacofr-prep {case}"
    assert_one_error_line(proc.returncode, proc.stdout, proc.stderr, prog, message)
    assert not list(tmp_path.iterdir()), "a rejected command wrote files"


def test_every_subcommand_has_a_case():
    from data_prep.cli import build_parser
    from pacofr.cli import EXTRA_COMMANDS, LIGHTNING_COMMANDS

    covered = {argv[0] for argv, _, _ in PACOFR_CASES.values()}
    assert covered >= {*LIGHTNING_COMMANDS, *EXTRA_COMMANDS}, sorted({*LIGHTNING_COMMANDS, *EXTRA_COMMANDS} - covered)
    prep = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert set(PREP_CASES) >= {*prep, "command"}, sorted(set(prep) - set(PREP_CASES))


def test_nearest_option_ranks_the_last_key_component_first():
    known = ["--model.min_lr_ratio", "--data.masker.init_args.mask_ratio", "--data.masker.init_args.patch_size"]
    known += ["--model.objective.init_args.num_codes", "--model.base_lr", "--trainer.max_steps", "--data.image_size"]
    assert nearest_option("--model.mask_ration", known) == "--data.masker.init_args.mask_ratio"
    assert nearest_option("--model.objective.num_codez", known) == "--model.objective.init_args.num_codes"
    assert nearest_option("--trainer.max_stepz=3", known) == "--trainer.max_steps"
    assert nearest_option("--modle.base_lr", known) == "--model.base_lr"
    assert nearest_option("--model.base_lr", known) is None  # known: not a misspelling
    assert nearest_option("--completely.different", known) is None
    # among keys with the same last component, the whole path decides
    assert nearest_option("--model.lr", ["--data.lr", "--model.lr_scale", "--model.objective.lr"]) == (
        "--model.objective.lr"
    )


def test_moved_keys_point_at_keys_that_exist():
    """Every new place in the table is a key PaCo-FR's objective accepts (a renamed init arg would leave the
    table pointing at nothing)."""
    import jsonargparse

    from pacofr.objectives import PaCoFR

    parser = jsonargparse.ArgumentParser()
    parser.add_class_arguments(PaCoFR, fail_untyped=False)
    accepted = {action.dest for action in parser._actions}
    for old, (new, _) in MOVED_KEYS.items():
        assert new.startswith("model.objective.init_args."), new
        assert new.removeprefix("model.objective.init_args.") in accepted, f"{old} -> {new}: PaCoFR has no such key"
