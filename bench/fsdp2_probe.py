"""FSDP2 for pacofr, tried for real on CPU processes: what works and what stops it (docs/scaling.md).

    .venv/bin/python bench/fsdp2_probe.py            # 2 CPU processes over gloo, a ViT-Ti objective, ~2-4 min

pacofr's FSDP is FSDP1 (``pacofr.strategies.BlockFSDPStrategy``: one unit per ViT block, the codebook a replicated
unit). FSDP2 is ``torch.distributed.fsdp.fully_shard`` (per-parameter sharding as DTensors), which Lightning runs
through ``ModelParallelStrategy`` with the sharding applied in the module's ``configure_model`` and distributed
(DCP) checkpoints. Each case below runs ``PretrainModule`` as it is, with ``fully_shard`` on every ViT block and on
the root (the same units as pacofr's FSDP1 policy), and compares with DDP where a comparison means something:

- ``train-mae``: MAE, 4 steps: the weights against DDP's after the same 4 steps;
- ``train-pacofr``: PaCo-FR with the codebook re-seeding every second step (its bookkeeping between steps, which
  FSDP1 keeps in a replicated unit), 4 steps, against DDP;
- ``resume``: MAE, a DCP checkpoint at step 2, resumed to step 4: against the uninterrupted FSDP2 run;
- ``ddp->fsdp2`` / ``fsdp2->ddp``: DDP's step-2 file resumed under FSDP2 (the strategy below re-keys its optimiser
  state by name), FSDP2's step-2 folder resumed under DDP (through ``pacofr checkpoint consolidate``'s code);
- ``compile``: MAE with each block compiled (``torch.compile`` per block under FSDP2), 2 steps.

Each case runs in its own ``torchrun``-free launch (Lightning starts the second process); the parent prints one
line per case: ok / FAILED with the error, and the largest weight difference where compared. The results and what
they mean for pacofr's ``fsdp`` preset: docs/scaling.md, "FSDP2".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

import lightning as L  # noqa: E402
import torch  # noqa: E402

STEPS = 4
WORLD = 2


def fsdp2_module_class():
    from timm.models.vision_transformer import Block
    from torch.distributed.fsdp import fully_shard

    from pacofr.training.module import PretrainModule

    class FSDP2Module(PretrainModule):
        compile_blocks = False

        def configure_model(self) -> None:
            mesh = self.device_mesh["data_parallel"]
            for module in self.objective.modules():
                if isinstance(module, Block):
                    if self.compile_blocks:
                        module.compile(backend="aot_eager")
                    fully_shard(module, mesh=mesh)
            # the objective is the root unit, not the LightningModule: Lightning calls ``training_step``, never the
            # module's ``forward``, so a root on the module would never gather its parameters
            fully_shard(self.objective, mesh=mesh)

    return FSDP2Module


def fsdp2_strategy():
    """``ModelParallelStrategy`` (data parallel only, gloo) that also resumes from one-file checkpoints (DDP's, or
    ``pacofr checkpoint consolidate``'s): Lightning's own load maps their position-keyed optimiser state by the
    model's parameter order, which is not pacofr's group order; here it is keyed by the names the checkpoint
    records (as ``BlockFSDPStrategy.load_checkpoint`` does for FSDP1) and loaded with torch's
    ``set_optimizer_state_dict``."""
    from lightning.pytorch.strategies import ModelParallelStrategy
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    from pacofr.checkpointing import optim_keys

    class FSDP2Strategy(ModelParallelStrategy):
        def load_checkpoint(self, checkpoint_path, weights_only=None):
            path = Path(self.broadcast(str(checkpoint_path)))
            if not path.is_file():
                return super().load_checkpoint(path, weights_only)
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
            options = StateDictOptions(full_state_dict=True, strict=True)
            set_model_state_dict(self.model, checkpoint.pop("state_dict"), options=options)
            recorded = checkpoint.get(optim_keys.NAMES_KEY) or []
            for i, (optimizer, state) in enumerate(zip(self.optimizers, checkpoint.pop("optimizer_states", []))):
                saved = optim_keys.saved_group_names(state, recorded[i] if i < len(recorded) else None)
                named = optim_keys.to_name_keyed(state, saved)
                set_optimizer_state_dict(self.model, optimizer, named, options=options)
            return checkpoint

    return FSDP2Strategy(data_parallel_size=WORLD, tensor_parallel_size=1, process_group_backend="gloo")


def build(kind: str, fsdp2: bool, compile_blocks: bool = False):
    from tiny_training import tiny_objective

    from pacofr.training.module import PretrainModule
    from pacofr.training.synthetic_batches import PremadeBatches, synthetic_batches

    torch.manual_seed(0)
    # PaCo-FR: codes unused for one step are re-seeded every second step, so the 4 steps rewrite the codebook
    # between steps (the bookkeeping FSDP1 keeps replicated; under FSDP2 it runs on sharded DTensors)
    reseed = {"codebook_options": {"proto_hidden": 64, "belief_hidden": 64, "dead_after": 1, "reseed_every": 2}}
    objective = tiny_objective(kind, **(reseed if kind == "pacofr" else {}))
    cls = fsdp2_module_class() if fsdp2 else PretrainModule
    module = cls(objective, warmup_steps=2, base_lr=1e-3)
    if fsdp2:
        module.compile_blocks = compile_blocks
    # one batch replayed: a resumed run sees the same data as an uninterrupted one whatever the loader's position
    data = PremadeBatches(synthetic_batches(objective, batch=4, count=1, seed=1), length=STEPS * WORLD)
    return module, data


def run_case(case: str, out: Path, ckpt: str | None, steps: int) -> None:
    """One launch (both ranks run this): fit, then write the full weights from rank 0."""
    from lightning.pytorch.strategies import DDPStrategy

    fsdp2 = not case.startswith("ddp")
    if ckpt and Path(ckpt).is_dir() and not fsdp2:  # FSDP2 -> DDP: pacofr's consolidate (as for FSDP1 folders)
        from pacofr.checkpointing.consolidate import consolidate

        if int(os.environ.get("LOCAL_RANK", "0")) == 0 and not Path(ckpt + ".pt").exists():
            consolidate(ckpt, ckpt + ".pt")
        ckpt = ckpt + ".pt"
    kind = "pacofr" if case.endswith("pacofr") else "mae"
    module, data = build(kind, fsdp2, compile_blocks=case == "compile")
    strategy = fsdp2_strategy() if fsdp2 else DDPStrategy(process_group_backend="gloo")
    trainer = L.Trainer(
        accelerator="cpu", devices=WORLD, strategy=strategy, max_steps=steps, logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(out), gradient_clip_val=1.0,
        enable_checkpointing=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    trainer.save_checkpoint(str(out / f"step{steps}.ckpt"))  # ModelParallel: a DCP folder; DDP: one file


def full_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.is_dir():  # a DCP folder: torch's converter to one file
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        single = path.with_suffix(".pt")
        dcp_to_torch_save(str(path), str(single))
        state = torch.load(single, weights_only=False)["state_dict"]
    else:
        state = torch.load(path, weights_only=False)["state_dict"]
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    if a.keys() != b.keys():
        raise AssertionError(f"different keys: {sorted(a.keys() ^ b.keys())[:5]}")
    return max(float((a[k] - b[k].reshape(a[k].shape)).abs().max()) for k in a)


def launch(case: str, out: Path, steps: int, ckpt: str | None = None, timeout: int = 600) -> tuple[bool, str]:
    command = [sys.executable, __file__, "--child", case, "--out", str(out), "--steps", str(steps)]
    if ckpt:
        command += ["--ckpt", ckpt]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode == 0:
        return True, ""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return False, (errors[-1] if errors else (lines[-1] if lines else f"exit {proc.returncode}"))[:300]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--ckpt", default=None)
    args = p.parse_args()
    if args.child:
        try:
            run_case(args.child, Path(args.out), args.ckpt, args.steps)
        except Exception:
            traceback.print_exc()
            sys.exit(1)
        return

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)

        def case(name: str, steps: int = STEPS, ckpt: str | None = None) -> tuple[bool, str, Path]:
            out = root / f"{name}-{steps}" / ("resumed" if ckpt else "fresh")
            ok, err = launch(name, out, steps, ckpt)
            return ok, err, out / f"step{steps}.ckpt"

        for kind in ("mae", "pacofr"):
            ok_ddp, err_ddp, ddp_path = case(f"ddp-{kind}")
            ok, err, path = case(f"train-{kind}")
            row = {"case": f"train-{kind}", "ok": ok, "error": err or err_ddp}
            if ok and ok_ddp:
                try:
                    row["max_abs_diff_vs_ddp"] = max_difference(full_weights(ddp_path), full_weights(path))
                    if kind == "pacofr":
                        state = torch.load(ddp_path, weights_only=False)["state_dict"]
                        row["codes_reseeded_ddp"] = int(state["objective.codebook.reseeded_total"])
                except Exception as e:  # noqa: BLE001 - reported, not raised: the probe reports what stops FSDP2
                    row.update(ok=False, error=f"comparing with DDP: {type(e).__name__}: {e}"[:300])
            rows.append(row)
        ok2, err2, half = case("train-mae", steps=2)
        row = {"case": "resume", "ok": ok2, "error": err2}
        if ok2:
            ok4, err4, resumed = case("train-mae", steps=STEPS, ckpt=str(half))
            row.update(ok=ok4, error=err4)
            if ok4 and rows[0]["ok"]:
                fresh = root / f"train-mae-{STEPS}" / "fresh" / f"step{STEPS}.ckpt"
                row["max_abs_diff_vs_uninterrupted"] = max_difference(full_weights(fresh), full_weights(resumed))
        rows.append(row)
        # conversions: DDP's step-2 file resumed by FSDP2, FSDP2's step-2 folder resumed by DDP, both to step 4
        ok_d2, err_d2, ddp_half = case("ddp-mae", steps=2)
        for name, runner, start, reference in (
            ("ddp->fsdp2", "train-mae", ddp_half, f"ddp-mae-{STEPS}"),
            ("fsdp2->ddp", "ddp-mae", half, f"train-mae-{STEPS}"),
        ):
            row = {"case": name, "ok": False, "error": err_d2 or err2}
            if ok_d2 and ok2:
                ok, err, resumed = case(runner, steps=STEPS, ckpt=str(start))
                row.update(ok=ok, error=err)
                if ok:
                    ref = root / reference / "fresh" / f"step{STEPS}.ckpt"
                    row["max_abs_diff_vs_uninterrupted"] = max_difference(full_weights(ref), full_weights(resumed))
            rows.append(row)
        ok, err, _ = case("compile", steps=2)
        rows.append({"case": "compile", "ok": ok, "error": err})
        if rows[0]["ok"]:  # the runs trained: the weights moved between step 2 and step 4
            fresh = root / f"train-mae-{STEPS}" / "fresh" / f"step{STEPS}.ckpt"
            rows[0]["max_abs_change_steps_2_to_4"] = max_difference(full_weights(half), full_weights(fresh))

    for row in rows:
        diffs = {k: v for k, v in row.items() if k.startswith(("max_abs", "codes_"))}
        state = "ok" if row["ok"] else "FAILED"
        print(f"{row['case']:14s} {state:7s} {diffs if diffs else ''} {row['error'] if not row['ok'] else ''}")
    for row in rows:
        print(json.dumps({"bench": "fsdp2_probe", **row}))


if __name__ == "__main__":
    main()
