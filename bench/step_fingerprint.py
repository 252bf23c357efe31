"""Record, then compare, what a few training steps of every method config compute: the guard for refactors that
must not change behaviour (``docs/architecture.md``: "Changing the training layers").

    .venv/bin/python bench/step_fingerprint.py record /tmp/before.pt     # before the change
    .venv/bin/python bench/step_fingerprint.py compare /tmp/before.pt    # after it: bitwise, or each difference

Cases: every pretraining run the configs in ``configs/pretrain`` compose (``COMPOSED``: a size file, a method
file and, for the demo, ``demo.yaml``, merged in order as ``pacofr fit`` merges its ``--config`` files; a case keeps
the name of the single file it replaced) and every pretrained arm of ``configs/study/default.yaml`` (its base
configs with the arm's overrides), each shrunk to a tiny ViT on 64-px synthetic batches
(``pacofr.training.synthetic_batches``) with 2 incubation steps where the method has incubation and a codebook
small enough to re-seed dead codes within the run. Each case runs ``STEPS`` optimiser
steps through ``PretrainModule`` and ``Trainer.fit`` at the config's precision and gradient clipping, and records
per step every loss term and every parameter's gradient (before clipping), the learning rate of every optimiser
group, and at the end every parameter, buffer and optimiser moment. Same machine, same torch, same threads:
equal means bitwise equal (a recording from another machine or torch build is not comparable).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench.common

import lightning as L  # noqa: E402
import torch  # noqa: E402

from bench.common import PRETRAIN_RUNS, load_pretrain_config  # noqa: E402
from pacofr.models.unwrap import original_param_name  # noqa: E402
from pacofr.study.runner import cell_config  # noqa: E402
from pacofr.study.spec import load_study  # noqa: E402
from pacofr.training.module import PretrainModule  # noqa: E402
from pacofr.training.synthetic_batches import PremadeBatches, synthetic_batches  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STEPS, BATCH = 5, 4
TINY = {
    "encoder_size": "tiny",
    "decoder_depth": 1,
    "decoder_dim": 64,
    "img_size": 64,
    "incubation_steps": 2,
    "incubation_epochs": None,
    "num_codes": 32,
    "code_dim": 16,
    "id_decoder_depth": 1,
    "id_decoder_dim": 64,
    "id_hidden_dim": 128,
    "id_proj_dim": 32,
}
TINY_CODEBOOK = {"proto_hidden": 32, "belief_hidden": 32, "dead_after": 2, "reseed_every": 2}
# every pretraining run of configs/pretrain: its name (that of the single file it once was) -> the files that make
# it, in `pacofr fit --config` order (bench/common.py: the table the other benches read too)
COMPOSED: dict[str, tuple[str, ...]] = dict(PRETRAIN_RUNS)


def pretrain_cases() -> dict[str, dict[str, Any]]:
    """name -> the merged config of every composed run in COMPOSED and every pretrained default-study arm."""
    cases = {}
    for name, files in COMPOSED.items():
        cases[f"config/{name}"] = load_pretrain_config(files)
    spec = load_study(REPO / "configs/study/default.yaml", root=Path(tempfile.gettempdir()) / "fingerprint-study")
    for cell in spec.cells():
        if cell.seed == spec.seeds[0] and cell.arm.pretrain:
            cwd = Path.cwd()
            try:
                os.chdir(REPO)  # the study names its base config relative to the repository
                cases[f"study/{cell.arm.name}"] = cell_config(spec, cell)
            finally:
                os.chdir(cwd)
    return cases


def accepted_args(cls: type) -> set[str] | None:
    """The keyword arguments ``cls`` accepts through its ``__init__`` chain (None: anything)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is torch.nn.Module or klass is object:
            continue
        params = inspect.signature(inspect.unwrap(init)).parameters
        names |= {n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)} - {"self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    return names


def build(config: dict[str, Any]) -> tuple[PretrainModule, dict[str, Any]]:
    model = dict(config["model"])
    spec = model.pop("objective")
    module_name, _, cls_name = spec["class_path"].rpartition(".")
    cls = getattr(__import__(module_name, fromlist=[cls_name]), cls_name)
    masker = ((config.get("data") or {}).get("masker") or {}).get("init_args") or {}
    kwargs = dict(spec.get("init_args") or {})
    kwargs.update(patch_size=masker.get("patch_size", 16), mask_ratio=masker.get("mask_ratio", 0.75))
    accepted = accepted_args(cls)
    # the tiny sizes wherever the class takes them (incubation_steps wins over incubation_epochs)
    kwargs.update({k: v for k, v in TINY.items() if k in accepted})
    if "codebook_options" in accepted:
        kwargs["codebook_options"] = {**(kwargs.get("codebook_options") or {}), **TINY_CODEBOOK}
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    objective = cls(**kwargs)
    module_accepts = accepted_args(PretrainModule)
    settings = {k: v for k, v in model.items() if k in module_accepts}
    settings.update(compile=False, warmup_steps=2)
    trainer = {k: v for k, v in (config.get("trainer") or {}).items() if k in ("precision", "gradient_clip_val")}
    return PretrainModule(objective, **settings), trainer


class Recorder(L.Callback):
    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = {
            original_param_name(n): p.grad.detach().clone()
            for n, p in pl_module.named_parameters()
            if p.grad is not None
        }
        lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.steps.append({"grads": grads, "lr": lrs})


def run_case(config: dict[str, Any]) -> dict[str, Any]:
    L.seed_everything(0, verbose=False)
    module, trainer_settings = build(config)
    terms_per_step: list[dict[str, torch.Tensor]] = []
    forward = module.objective.forward

    def recording_forward(batch, step=0):
        result = forward(batch, step)
        if module.training:
            terms = {"total": result.total, **result.terms}
            terms_per_step.append({k: v.detach().float().clone() for k, v in terms.items()})
        return result

    module.objective.forward = recording_forward  # type: ignore[method-assign]
    batches = synthetic_batches(module.objective, BATCH, 2, seed=1)
    recorder = Recorder()
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=STEPS,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=False,
            logger=False,
            callbacks=[recorder],
            default_root_dir=tmp,
            log_every_n_steps=1,
            **trainer_settings,
        )
        trainer.fit(module, datamodule=PremadeBatches(batches, STEPS))
    del module.objective.forward
    optimizer = trainer.optimizers[0]
    name_of = {id(p): original_param_name(n) for n, p in module.named_parameters()}
    moments = {
        name_of[id(p)]: {k: v.clone() for k, v in optimizer.state[p].items() if torch.is_tensor(v)}
        for g in optimizer.param_groups
        for p in g["params"]
        if p in optimizer.state
    }
    return {
        "terms": terms_per_step,
        "steps": recorder.steps,
        "state": {original_param_name(k): v.clone() for k, v in module.state_dict().items()},
        "moments": moments,
    }


def differences(before: Any, after: Any, where: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for key in sorted(set(before) | set(after), key=str):
            if key not in after:
                out.append(f"{where}/{key}: gone")
            elif key not in before:
                out.append(f"{where}/{key}: new")
            else:
                out += differences(before[key], after[key], f"{where}/{key}")
        return out
    if isinstance(before, list | tuple) and isinstance(after, list | tuple):
        if len(before) != len(after):
            return [f"{where}: {len(before)} entries, now {len(after)}"]
        return [d for i, (a, b) in enumerate(zip(before, after)) for d in differences(a, b, f"{where}[{i}]")]
    if torch.is_tensor(before) and torch.is_tensor(after):
        if before.shape != after.shape or before.dtype != after.dtype:
            return [f"{where}: {tuple(before.shape)} {before.dtype} -> {tuple(after.shape)} {after.dtype}"]
        if torch.equal(before, after):
            return []
        diff = (before.double() - after.double()).abs().max().item()
        return [f"{where}: max |diff| {diff:.3g}"]
    return [] if before == after else [f"{where}: {before!r} -> {after!r}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("record", "compare"))
    parser.add_argument("path", type=Path)
    parser.add_argument("--only", nargs="*", default=None, help="case names (default: all)")
    args = parser.parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # the per-case start-up lines
    torch.set_num_threads(1)  # one thread: the same reduction order on every run of this machine
    cases = pretrain_cases()
    if args.only:
        cases = {k: v for k, v in cases.items() if k in args.only}
    results = {}
    for name, config in cases.items():
        results[name] = run_case(config)
        print(f"{name}: {len(results[name]['steps'])} steps, {len(results[name]['state'])} tensors", flush=True)
    if args.action == "record":
        torch.save(results, args.path)
        print(f"recorded {len(results)} cases in {args.path}")
        return 0
    before = torch.load(args.path, weights_only=False)
    failed = 0
    for name in sorted(set(before) | set(results)):
        if name not in results or name not in before:
            print(f"{name}: {'not run now' if name not in results else 'not recorded before'}")
            continue
        found = differences(before[name], results[name])
        failed += bool(found)
        print(f"{name}: {'bitwise equal' if not found else f'{len(found)} differences'}")
        for line in found[:20]:
            print(f"    {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
