"""Record one training step of each method config in ``recorded_step.json`` (what test_recorded_step.py checks).

    .venv/bin/python tests/training/record_step.py             # compare with the recording, then rewrite it
    .venv/bin/python tests/training/record_step.py --check     # compare only (exit 1 on a difference)

Each case is a pretraining config's ``model`` section as the module took it before the objective redesign
(flat arguments, the objective chosen by flags), shrunk to a tiny ViT at 32 px (64 px for the demo), seeded
with ``seed_everything(0)``; one batch of 4 random images with exact-count masks (seed 0), ``manual_seed(1)``
before the step, on one CPU thread; then ``loss.backward()`` and the codebook update. The cases' arguments are
read from the recording itself (``--cases`` names another file, either layout), so a re-recording keeps them.

Before writing, the new step is compared with the old recording: bit for bit when this machine's signature is
the recording's, within the tolerances otherwise. A re-recording that disagrees beyond them is refused unless
``--force`` (then the code changed a number: say why in ``--note``). A recording in the layout written before
the redesign (no ``cases`` key; names ``model.*``; digests and hex floats only) is compared bit for bit, and the
result goes into the new recording's provenance.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(HERE))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from recorded import (  # noqa: E402
    TOLERANCES,
    compare_case,
    digest,
    machine_signature,
    signature_differences,
    summarise_scalar,
    summarise_tensor,
)

import pacofr  # noqa: E402
from pacofr.checkpointing.legacy_keys import upgrade_name  # noqa: E402
from pacofr.objectives import FSFM, MAE, PaCoFR  # noqa: E402
from pacofr.training.module import PretrainModule  # noqa: E402

RECORDING = HERE / "recorded_step.json"
REPO = HERE.parents[1]

CORE = ("encoder_size", "img_size", "patch_size", "decoder_depth", "decoder_dim", "mask_ratio", "drop_path_rate")
CORE += ("grad_checkpointing",)
MODULE = ("base_lr", "min_lr_ratio", "weight_decay", "betas", "warmup_steps", "compile", "max_nonfinite_steps")
PACOFR = (
    "covered_weight", "num_codes", "code_dim", "codebook_update", "codebook_options", "replace_ratio",
    "num_candidates", "candidate_mix", "incubation_steps", "codebook_weight", "codebook_beta", "spatial_weight",
    "spatial_variant", "spatial_centroid_weight", "teacher_momentum",
)  # fmt: skip
# Buffers the codebook gained after the redesign (its usage monitor and re-seed count): not in the old layout.
ADDED_BUFFERS = ("objective.codebook.steps_since_hit", "objective.codebook.reseeded_total")


def build(old: dict[str, Any]) -> PretrainModule:
    """The pre-redesign module's flat arguments as an objective (chosen by what used to be flags) + module."""
    core = {k: old[k] for k in CORE}
    if old["use_codebook"]:
        # the spatial loss as it was then: on all patches, pairs averaged, no left/right sides, no position prior
        before = dict(spatial_on="all", spatial_pairs="mean", spatial_sides=False, spatial_prior=False)
        objective = PaCoFR(**core, **{k: old[k] for k in PACOFR}, **before)
    else:
        assert old["spatial_weight"] == 0, "no method without a codebook had a spatial loss"
        if old["covered_weight"] > 0:  # FSFM without its ID branch, which the old module did not have
            objective = FSFM(covered_weight=old["covered_weight"], id_weight=0.0, **core)
        else:
            objective = MAE(**core)
    return PretrainModule(objective, **{k: old[k] for k in MODULE})


def fixed_batch(num_patches: int, num_masked: int, img: int, b: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    order = torch.rand(b, num_patches, generator=g).argsort(1)
    mask = torch.zeros(b, num_patches, dtype=torch.bool).scatter_(1, order[:, :num_masked], True)
    covered = torch.zeros_like(mask).scatter_(1, order[:, :1], True)
    hist = torch.rand(b, num_patches, 9, generator=g).pow(4)
    return {
        "image": torch.randn(b, 3, img, img, generator=g),
        "mask": mask,
        "covered_patches": covered,
        "region_hist": hist / hist.sum(-1, keepdim=True),
        "covered": torch.zeros(b, dtype=torch.long),
    }


@dataclass
class Step:
    """One case's step: the loss, gradients (by parameter name) and the codebook's buffers after its update."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor]
    no_grad: list[str]
    state_keys: list[str]
    codebook_buffers: dict[str, torch.Tensor]


def run_step(args: dict[str, Any], phase: str) -> Step:
    """One step of a case on one CPU thread (the caller's thread count is restored)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        L.seed_everything(0, verbose=False)
        module = build(args)
        objective = module.objective
        step = 0 if phase == "incubation" else objective.incubation_steps
        assert objective.incubating(step) == (phase == "incubation")
        batch = fixed_batch(objective.num_patches, objective.num_masked, args["img_size"])
        torch.manual_seed(1)
        total, terms, out = objective(batch, step)
        total.backward()
        grads = {n: p.grad for n, p in module.named_parameters() if p.grad is not None}
        no_grad = sorted(n for n, p in module.named_parameters() if p.grad is None)
        state_keys = list(module.state_dict())
        buffers = {}
        if getattr(objective, "codebook", None) is not None:
            objective.after_step(objective.state_for_after_step(out), step)
            buffers = {n: v.detach().clone() for n, v in objective.codebook.named_buffers()}
        return Step(total.detach(), {k: v.detach() for k, v in terms.items()}, grads, no_grad, state_keys, buffers)
    finally:
        torch.set_num_threads(threads)


def summarise(step: Step) -> dict[str, Any]:
    """A step as recorded: hex floats and floats, tensor digests and summaries, the structure."""
    summary: dict[str, Any] = {
        "total": summarise_scalar(step.total),
        "terms": {k: summarise_scalar(v) for k, v in sorted(step.terms.items())},
        "grads": {n: summarise_tensor(g) for n, g in sorted(step.grads.items())},
        "no_grad": step.no_grad,
        "state_keys": step.state_keys,
    }
    if step.codebook_buffers:
        summary["codebook_buffers"] = {n: summarise_tensor(v) for n, v in sorted(step.codebook_buffers.items())}
    return summary


def load_cases(path: Path) -> dict[str, dict[str, Any]]:
    """``{case: recorded case}`` from a recording in either layout."""
    data = json.loads(path.read_text())
    return data.get("cases", data)


def compare_legacy(step: Step, old: dict[str, Any]) -> dict[str, Any]:
    """Bit-for-bit agreement with a case recorded before the redesign (old names, digests and hex floats)."""
    scalars = {"total": step.total, **step.terms}
    old_scalars = {"total": old["total"], **old["terms"]}
    old_grads = {upgrade_name(n): d for n, d in old["grads"].items()}
    old_buffers = old.get("codebook_buffers", {})
    rel = [abs(scalars[k].item() / float.fromhex(h) - 1) for k, h in old_scalars.items() if float.fromhex(h)]
    same_scalars = sum(scalars[k].item().hex() == h for k, h in old_scalars.items())
    same_grads = sum(n in step.grads and digest(step.grads[n]) == d for n, d in old_grads.items())
    same_buffers = sum(
        n in step.codebook_buffers and digest(step.codebook_buffers[n]) == d for n, d in old_buffers.items()
    )
    return {
        "total_and_terms_equal": f"{same_scalars}/{len(old_scalars)}",
        "terms_max_rel_diff": float(f"{max(rel):.3g}"),
        "grad_digests_equal": f"{same_grads}/{len(old_grads)}",
        "buffer_digests_equal": f"{same_buffers}/{len(old_buffers)}",
        "structure_equal": sorted(step.grads) == sorted(old_grads)
        and step.no_grad == sorted(upgrade_name(n) for n in old["no_grad"])
        and [k for k in step.state_keys if k not in ADDED_BUFFERS] == [upgrade_name(k) for k in old["state_keys"]],
    }


def code_state() -> dict[str, Any]:
    """The commit of this work tree and whether the imported ``pacofr`` sources are that commit's."""

    def git(*args: str, stdin: str | None = None) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], input=stdin, capture_output=True, text=True).stdout

    commit = git("rev-parse", "HEAD").strip() or None
    package = Path(pacofr.__file__).resolve().parent
    committed = {}
    for line in git("ls-tree", "-r", "HEAD", "--", "src/pacofr").splitlines():
        meta, path = line.split("\t", 1)
        if path.endswith(".py"):
            committed[path[len("src/pacofr/") :]] = meta.split()[2]
    files = sorted(p for p in package.rglob("*.py"))
    hashes = git("hash-object", "--stdin-paths", stdin="\n".join(map(str, files))).split()
    imported = {str(p.relative_to(package)): h for p, h in zip(files, hashes)}
    changed = sorted(p for p in set(committed) | set(imported) if committed.get(p) != imported.get(p))
    return {"commit": commit, "pacofr_sources_differ_from_commit": changed}


def dumps(recording: dict[str, Any]) -> str:
    """Indented JSON with each list of numbers (shapes, projections) on one line."""
    text = json.dumps(recording, indent=1)
    return re.sub(r"\[\s+([-+.\deE,\s]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=Path, default=RECORDING, help="recording to take the cases from")
    parser.add_argument("--out", type=Path, default=RECORDING)
    parser.add_argument("--check", action="store_true", help="compare only, write nothing")
    parser.add_argument("--force", action="store_true", help="write even when the step differs beyond tolerance")
    parser.add_argument("--note", action="append", default=[], help="a line for the provenance (repeatable)")
    opts = parser.parse_args(argv)

    source = json.loads(opts.cases.read_text())
    legacy = "cases" not in source
    old_cases = load_cases(opts.cases)
    signature = machine_signature()
    differences = [] if legacy else signature_differences(source["signature"], signature)
    bitwise = not legacy and not differences
    if not legacy:
        how = "bit for bit" if bitwise else f"within tolerances ({'; '.join(differences)})"
        print(f"comparing with {opts.cases} {how}")

    cases, problems, legacy_check = {}, {}, {}
    for name, old in sorted(old_cases.items()):
        step = run_step(old["args"], old["phase"])
        cases[name] = {"args": old["args"], "phase": old["phase"], **summarise(step)}
        if legacy:
            legacy_check[name] = compare_legacy(step, old)
            print(name, legacy_check[name])
        else:
            problems[name] = compare_case(cases[name], old, bitwise)
            print(name, "agrees" if not problems[name] else f"{len(problems[name])} differences")
            for line in problems[name][:20]:
                print("   ", line)
    disagree = any(problems.values())
    if opts.check:
        return 1 if disagree else 0
    if disagree and not opts.force:
        print("not written: the step differs from the recording (--force, with a --note saying why)")
        return 1

    if legacy:
        compared = {"recording": opts.cases.name, "layout": "pre-redesign (bit for bit only)", "cases": legacy_check}
    else:
        compared = {
            "recording": opts.cases.name,
            "recorded_on": source["signature"],
            "mode": "bit for bit" if bitwise else "tolerances",
            "agrees": not disagree,
        }
    recording = {
        "provenance": {
            "written_by": "tests/training/record_step.py",
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            **code_state(),
            "tolerances": {"term_rtol": TOLERANCES.term_rtol, "tensor_rtol": TOLERANCES.tensor_rtol},
            "compared_with_previous": compared,
            "notes": opts.note,
        },
        "signature": signature,
        "cases": cases,
    }
    opts.out.write_text(dumps(recording))
    print(f"wrote {opts.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
