"""Checkpoints at scale: pacofr's sharded (FSDP) checkpoints of ViT-L/16 and ViT-H/14 on CPU processes over gloo.

    nice -n 10 .venv/bin/python bench/scale_checkpoints.py                          # large and huge, 4 -> 2 ranks
    .venv/bin/python bench/scale_checkpoints.py --sizes tiny --ranks 2             # under a minute

Every checkpoint is written and read by ``pacofr fit`` with ``configs/trainer/fsdp_cpu.yaml``: pacofr's
``BlockFSDPStrategy`` (one FSDP unit per ViT block, the codebook replicated, ``state_dict_type: sharded``, the atomic
folder write), its CLI, ``StepCheckpoint``, resume resolution and data module, with the product's objective
(PaCo-FR; ``--objective mae`` for plain MAE) at the given encoder size and that size's default decoder, batch 1 per
rank, incubation off (so AdamW holds both moments of every trained parameter), on synthetic faces. Per size:

1. **save**: a 1-step fit on ``--ranks`` processes writes one sharded checkpoint (``step00000001.ckpt``: one
   ``.distcp`` file per rank, ``.metadata``, ``meta.pt``), timed around ``Trainer.save_checkpoint`` on every rank
   (gathering the sharded state dicts, DCP's write, the strategy's barriers and rename);
2. **load at the same world size**: a fit resumed from it on ``--ranks`` processes (already at ``max_steps``: it
   loads and stops), timed around the strategy's ``load_checkpoint`` (weights and optimiser shards);
3. **resume at another world size** (e.g. save at 4 ranks, resume at 2): the same on ``--resume-ranks``
   processes (default half), which then trains ``--resume-steps`` steps and saves at its own world size;
4. **consolidate**: ``pacofr.checkpointing.consolidate.consolidate`` into one file, in a process of its own;
5. **keep-N pruning**: ``--prune-copies`` sharded folders (hard links of the checkpoint's shards, each with a
   ``meta.pt`` of its own step) pruned by ``prune_checkpoints(keep_last=--keep-last)``; the newest N must remain.

Loads are checked, not only timed: per parameter, the sums of the weights and of both AdamW moments (added up over
the ranks' shards, a replicated unit counted once) must equal those at the save, at either world size; the
consolidated file is checked the same way.

Memory: ``pacofr fit`` builds the whole model in every process before FSDP shards it (4 x 2.6 GB for ViT-H at 4
ranks). By default (``--init meta``) the rank processes run ``pacofr fit`` with the encoder built on the meta device
and FSDP materialising it unit by unit (what Lightning's ``init_module(empty_init=True)`` does), freshly initialised:
the values differ, the shapes, wrapping, state and checkpoint path do not. ``--init full`` runs plain ``pacofr fit``.
The rank processes run with ``MALLOC_MMAP_THRESHOLD_`` (``--malloc-mmap-threshold``, 4 MiB): otherwise glibc keeps
FSDP's freed all-gather buffers and the RSS overstates what a rank needs (by ~0.7 GB per rank at ViT-B).
A rank holds ~1.1 GB of its own plus 16 B per parameter of its shard (weights, gradients, two moments), and a save
briefly copies its weights and moments again (12 B): about ``ranks x 1.1 GB + 28 B x params`` in all, whatever the
world size; a size whose estimate exceeds ``--max-gb`` or the available memory is skipped and says so. Disk: 12 B
per parameter per checkpoint (two at a time).

The image is small (``--patches`` per side, default 4) to keep the step cheap; the model is the one at 224 px apart
from what is per patch position (checked on the meta device and printed). Prints a markdown table and one JSON line
per size. Times are wall clock with every rank a CPU process on this machine's cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import yaml  # noqa: E402
from common import (  # noqa: E402
    PRETRAIN_RUNS,
    environment,
    load_pretrain_config,
    markdown_table,
    peak_rss_bytes,
    reset_peak_rss,
    rss_bytes,
)

PATCH = {"tiny": 16, "small": 16, "base": 16, "large": 16, "huge": 14}  # ViT-L/16, ViT-H/14
CONFIGS = {"pacofr": PRETRAIN_RUNS["pacofr_vit_b16"], "mae": PRETRAIN_RUNS["mae_vit_b16"]}  # config files, in order
WRAPPERS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
MOMENTS = ("exp_avg", "exp_avg_sq")
CHECK_RTOL = 1e-6  # float64 sums of the same fp32 values, added up in another order
FIT_CHILD = "--fit-child"  # argv[1] of a rank process: run ``pacofr fit`` with the meta-device encoder
RANK_BASE = 1.1e9  # a rank process before any model state (torch, Lightning, pacofr, the data pipeline)
STATE_BYTES = 16 + 12  # per parameter over all ranks: weights, gradients, 2 moments + the save's copies
GB = 1e9


# --- inside the rank processes -----------------------------------------------------------------------------------
def clean_name(name: str) -> str:
    for wrapper in WRAPPERS:
        name = name.replace(wrapper, "")
    return name


def state_sums(trainer: L.Trainer, module: L.LightningModule) -> dict[str, list[float]]:
    """Per parameter: [numel, sum of the weights, of exp_avg, of exp_avg_sq, trainable] over the whole model, from
    this rank's shards all-reduced over the ranks (a unit FSDP replicates counted on rank 0 only). Collective."""
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy

    world, rank = trainer.world_size, trainer.global_rank
    replicated: set[int] = set()
    if world > 1:
        for unit in trainer.strategy.model.modules():
            if isinstance(unit, FullyShardedDataParallel) and unit.sharding_strategy == ShardingStrategy.NO_SHARD:
                replicated.update(id(p) for p in unit.parameters())
    state: dict[Any, dict] = {}
    for optimizer in trainer.optimizers:
        state.update(optimizer.state)
    names, rows = [], []
    for name, p in module.named_parameters():
        slots = state.get(p, {})
        row = [float(p.numel()), p.detach().double().sum().item()]
        row += [slots[s].double().sum().item() if s in slots else 0.0 for s in MOMENTS]
        row.append(float(p.requires_grad))  # frozen ones (the sin-cos position embeddings) have no moments
        weight = 0.0 if id(p) in replicated and rank != 0 else 1.0
        names.append(clean_name(name))
        rows.append([weight * v for v in row])
    table = torch.tensor(rows, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized() and world > 1:
        dist.all_reduce(table)
    return dict(zip(names, table.tolist()))


class CheckpointClock(L.Callback):
    """Times ``Trainer.save_checkpoint`` and the strategy's ``load_checkpoint`` on this rank (the ranks start each
    together), with the RSS before and the peak during each; records the state sums at the first save and after
    the load, and the RSS after each step; writes ``<out>/rank<R>.json`` when the run ends."""

    def __init__(self, out: str):
        self.out = Path(out)
        self.record: dict[str, Any] = {"saves": [], "loads": [], "step_rss": []}
        self._t0 = time.perf_counter()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        save, load, strategy = trainer.save_checkpoint, trainer.strategy.load_checkpoint, trainer.strategy

        def timed(call: Any, kind: str, path: Any, *args: Any, **kwargs: Any) -> Any:
            strategy.barrier(f"clock-{kind}")
            before, _ = rss_bytes(), reset_peak_rss()
            start = time.perf_counter()
            result = call(path, *args, **kwargs)
            seconds = time.perf_counter() - start
            self.record[kind].append({"path": str(path), "s": seconds, "rss_before": before, "peak": peak_rss_bytes()})
            return result

        def timed_save(filepath: Any, *args: Any, **kwargs: Any) -> None:
            if not self.record["saves"]:
                sums = state_sums(trainer, pl_module)
                if trainer.is_global_zero:
                    self.record["sums"] = sums
            timed(save, "saves", filepath, *args, **kwargs)

        def timed_load(checkpoint_path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
            checkpoint = timed(load, "loads", checkpoint_path, *args, **kwargs)
            sums = state_sums(trainer, pl_module)
            if trainer.is_global_zero:
                self.record["loaded_sums"] = sums
            return checkpoint

        trainer.save_checkpoint = timed_save
        strategy.load_checkpoint = timed_load
        meta = any(p.is_meta for p in pl_module.parameters())  # before FSDP wraps (and materialises) the model
        self.record.update(rank=trainer.global_rank, world=trainer.world_size, built_on_meta=meta)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.record["step_rss"].append(rss_bytes())  # weights, gradients and moments in place, before any save

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.record.update(
            max_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            wall_s=time.perf_counter() - self._t0,
            global_step=trainer.global_step,
        )
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.record))


def materialize(module: torch.nn.Module) -> None:
    """FSDP's ``param_init_fn``: CPU storage for what ``module`` itself holds on the meta device, freshly initialised
    (its ``reset_parameters`` where it has one, else N(0, 0.02) weights and zero buffers). FSDP calls it on the
    modules of a unit just before it flattens and shards that unit, so no rank ever holds the whole model."""
    own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    if not any(t.is_meta for t in own):
        return
    module.to_empty(device="cpu", recurse=False)
    with torch.no_grad():
        if callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()
            return
        for p in module.parameters(recurse=False):
            p.normal_(0.0, 0.02)
        for b in module.buffers(recurse=False):
            b.zero_()


def fit_child(argv: list[str]) -> int:
    """``pacofr fit`` with the objective's encoder built on the meta device and materialised by FSDP, unit by unit.
    Lightning's launcher starts the other ranks with this same command line, so they do the same."""
    from functools import wraps

    import pacofr.objectives.masked_autoencoder as objective_base
    from pacofr.cli import main as pacofr_main
    from pacofr.strategies import BlockFSDPStrategy

    build_encoder, setup_model = objective_base.build_encoder, BlockFSDPStrategy._setup_model

    @wraps(build_encoder)
    def build_encoder_on_meta(*args: Any, **kwargs: Any) -> torch.nn.Module:
        with torch.device("meta"):
            return build_encoder(*args, **kwargs)

    def setup_model_materialising(self: BlockFSDPStrategy, model: torch.nn.Module) -> torch.nn.Module:
        self.kwargs.setdefault("param_init_fn", materialize)
        return setup_model(self, model)

    objective_base.build_encoder = build_encoder_on_meta
    BlockFSDPStrategy._setup_model = setup_model_materialising
    return pacofr_main(argv)


# --- the driver ---------------------------------------------------------------------------------------------------
def compare_sums(expected: dict[str, list[float]], got: dict[str, list[float]]) -> tuple[bool, float]:
    """(every parameter's size and its weight and moment sums match, the largest relative difference)."""
    if expected.keys() != got.keys():
        return False, math.inf
    worst = 0.0
    for name, row in expected.items():
        for a, b in zip(row[:4], got[name][:4]):
            worst = max(worst, abs(a - b) / max(abs(a), 1e-3))
    return worst <= CHECK_RTOL, worst


def objective_settings(objective: str, size: str, patch: int, image: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the objective's pretraining config, its objective kwargs at this size and geometry, incubation off)."""
    config = load_pretrain_config(CONFIGS[objective])
    kwargs = dict(config["model"]["objective"]["init_args"])
    kwargs.update(encoder_size=size, decoder_depth=None, decoder_dim=None, img_size=image, patch_size=patch)
    kwargs["mask_ratio"] = config["data"]["masker"]["init_args"]["mask_ratio"]
    if objective == "pacofr":
        kwargs["incubation_steps"] = 0  # the first step trains everything: AdamW state for every parameter
    return config, kwargs


def geometry_check(objective: str, size: str, patch: int, image: int) -> dict[str, Any]:
    """The model at this image size against the one at 224 px, built on the meta device (no memory)."""
    from importlib import import_module

    config, kwargs = objective_settings(objective, size, patch, image)
    module_name, _, cls_name = config["model"]["objective"]["class_path"].rpartition(".")
    cls = getattr(import_module(module_name), cls_name)
    shapes = []
    for img in (image, 224):
        with torch.device("meta"):
            model = cls(**{**kwargs, "img_size": img})
        shapes.append({n: (tuple(p.shape), p.numel()) for n, p in model.named_parameters()})
    here, full = shapes
    return {
        "params": sum(v[1] for v in here.values()),
        "params_224": sum(v[1] for v in full.values()),
        "encoder_params_224": sum(v[1] for n, v in full.items() if n.startswith("encoder.")),
        "differ_from_224": sorted(n for n in full if here.get(n, (None,))[0] != full[n][0]),
        "same_names": here.keys() == full.keys(),
    }


def fit_config(args, work: Path, size: str, data_root: Path, run: str) -> Path:
    patch = PATCH[size]
    config, kwargs = objective_settings(args.objective, size, patch, patch * args.patches)
    for linked in ("img_size", "patch_size", "mask_ratio"):
        del kwargs[linked]  # pacofr's CLI links them from the data side
    config["run_dir"] = str(work / run)
    config["model"]["objective"]["init_args"] = kwargs
    config["model"].update(compile=False, warmup_steps=1)
    if "codebook_warmup_steps" in kwargs:
        kwargs["codebook_warmup_steps"] = 1
    data = config["data"]
    data.update(root=str(data_root), batch_size=1, num_workers=0, image_size=patch * args.patches, val_split=None)
    data.update(shuffle_buffer=4)
    data["masker"]["init_args"]["patch_size"] = patch
    clock = {"class_path": "scale_checkpoints.CheckpointClock", "init_args": {"out": str(work / run / "clock")}}
    config["trainer"] = {
        "max_steps": 1,
        "log_every_n_steps": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": False,
        "limit_val_batches": 0,
        "val_check_interval": None,
        "check_val_every_n_epoch": None,
        "gradient_clip_val": 3.0,
        "callbacks": [clock],
    }
    config["checkpoint"] = {"every_n_train_steps": 1, "save_last": False, "save_top_k": -1, "keep_last_n": None}
    path = work / f"{run}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_fit(args, config: Path, ranks: int, *extra: str) -> tuple[float, list[dict]]:
    """``pacofr fit`` on ``ranks`` CPU processes (a process group of its own, killed whole if it fails); returns its
    wall time and every rank's clock record."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    paths = [str(REPO / "bench"), str(REPO / "src"), *filter(None, [env.get("PYTHONPATH")])]
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=os.pathsep.join(paths))
    if args.malloc_mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
    launcher = [sys.executable, "-m", "pacofr.cli"] if args.init == "full" else [sys.executable, __file__, FIT_CHILD]
    trainer = REPO / "configs" / "trainer" / "fsdp1_cpu.yaml"  # FSDP1: its meta-device init is hooked below
    command = [*launcher, "fit", "--config", str(config), "--config", str(trainer), "--trainer.devices", str(ranks)]
    start = time.perf_counter()
    proc = subprocess.Popen(
        [*command, *extra], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=args.timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):  # ranks left over; pacofr's preemption handler ignores SIGTERM
            os.killpg(proc.pid, signal.SIGKILL)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"pacofr fit on {ranks} ranks failed ({proc.returncode}):\n{out[-6000:]}")
    run_dir = Path(yaml.safe_load(config.read_text())["run_dir"])
    return wall, [json.loads((run_dir / "clock" / f"rank{r}.json").read_text()) for r in range(ranks)]


def write_data(work: Path, image: int) -> Path:
    from data_prep.synth.generate import SynthConfig, write_dataset

    root = work / "faces"
    if not (root / "_info.json").exists():
        write_dataset(root, SynthConfig(n=24, size=max(64, image), seed=0, identities=3, val_fraction=0.0))
    return root


def folder_files(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}


def prune_bench(folder: Path, copies: int, keep_last: int) -> dict[str, Any]:
    """``copies`` sharded folders of steps 1..copies (hard links of ``folder``'s shards, each its own ``meta.pt``)
    beside each other, pruned to the newest ``keep_last``."""
    from pacofr.checkpointing.prune import prune_checkpoints

    where = folder.parent.parent / "prune"
    where.mkdir()
    meta = torch.load(folder / "meta.pt", map_location="cpu", weights_only=True)
    for step in range(1, copies + 1):
        copy = where / f"step{step:08d}.ckpt"
        copy.mkdir()
        for f in folder.iterdir():
            if f.name != "meta.pt":
                os.link(f, copy / f.name)
        torch.save({**meta, "global_step": step}, copy / "meta.pt")
    start = time.perf_counter()
    removed = prune_checkpoints(where, keep_last=keep_last)
    seconds = time.perf_counter() - start
    left = sorted(p.name for p in where.iterdir())
    expected = [f"step{s:08d}.ckpt" for s in range(copies - keep_last + 1, copies + 1)]
    shutil.rmtree(where)
    return {"prune_s": seconds, "prune_removed": len(removed), "prune_left": left, "prune_ok": left == expected}


CONSOLIDATE = """
import json, resource, sys, time, torch
from pacofr.checkpointing.consolidate import consolidate
from pacofr.checkpointing.optim_keys import NAMES_KEY, to_name_keyed
start = time.perf_counter()
out = consolidate(sys.argv[1], sys.argv[2])
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
ckpt = torch.load(out, map_location="cpu", weights_only=True, mmap=True)
state = to_name_keyed(ckpt["optimizer_states"][0], ckpt[NAMES_KEY][0])["state"]
names = set(json.loads(sys.argv[3]))
sums = {}
for name, t in ckpt["state_dict"].items():
    if name in names:
        slots = state.get(name, {})
        sums[name] = [float(t.numel()), t.double().sum().item()]
        sums[name] += [slots[s].double().sum().item() if s in slots else 0.0 for s in ("exp_avg", "exp_avg_sq")]
print(json.dumps({"s": seconds, "max_rss": peak, "sums": sums}))
"""


def consolidate_bench(args, folder: Path, names: list[str]) -> dict[str, Any]:
    """``consolidate`` in a fresh process (its time and peak RSS), then the file's state sums."""
    out = folder.parent.parent / "consolidated.ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", CONSOLIDATE, str(folder), str(out), json.dumps(names)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"consolidate failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["bytes"] = out.stat().st_size
    out.unlink()
    return result


def mem_available() -> float:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return math.inf


def ram_estimate(args, params: int) -> float:
    """Bytes of RAM the runs of one size need at their peak (the saves; see the module's docstring)."""
    need = max(args.ranks, args.resume_ranks) * RANK_BASE + STATE_BYTES * params
    if args.init == "full":
        need += args.ranks * 4 * params  # every rank holds the whole model before FSDP shards it
    return need


def load_row(key: str, ranks: int, wall: float, clocks: list[dict], saved: dict) -> dict[str, Any]:
    ok, worst = compare_sums(saved, next(c["loaded_sums"] for c in clocks if "loaded_sums" in c))
    return {
        f"load_{key}_ranks": ranks,
        f"load_{key}_s_max": max(c["loads"][0]["s"] for c in clocks),
        f"load_{key}_rss_before_max": max(c["loads"][0]["rss_before"] for c in clocks),
        f"load_{key}_peak_rss_max": max(c["loads"][0]["peak"] for c in clocks),
        f"load_{key}_state_equal": ok,
        f"load_{key}_max_rel_diff": worst,
        f"load_{key}_fit_wall_s": wall,
        f"load_{key}_fit_max_rss_max": max(c["max_rss"] for c in clocks),
        f"load_{key}_steps_after": max(c["global_step"] for c in clocks) - 1,
    }


def bench_size(args, size: str, work: Path) -> dict[str, Any]:
    patch, image = PATCH[size], PATCH[size] * args.patches
    row: dict[str, Any] = {"bench": "scale_checkpoints", "size": size, "patch": patch, "image": image}
    row.update(objective=args.objective, init=args.init, ranks=args.ranks, resume_ranks=args.resume_ranks)
    row.update(geometry_check(args.objective, size, patch, image))
    need, available = ram_estimate(args, row["params"]), mem_available()
    row.update(ram_estimate_gb=need / GB, ram_available_gb=available / GB)
    if need > min(args.max_gb * GB, available):
        row["skipped"] = f"needs ~{need / GB:.0f} GB of RAM (--max-gb {args.max_gb:g}, {available / GB:.0f} available)"
        return row
    data_root = write_data(work, image)

    # 1. save at --ranks
    wall, clocks = run_fit(args, fit_config(args, work, size, data_root, f"{size}-save"), args.ranks)
    folder = work / f"{size}-save" / "checkpoints" / "step00000001.ckpt"
    files = folder_files(folder)
    shards = [b for n, b in files.items() if n.endswith(".distcp")]
    saved = next(c["sums"] for c in clocks if "sums" in c)
    row.update(
        fit_save_wall_s=wall,
        save_s_max=max(c["saves"][0]["s"] for c in clocks),
        save_s_min=min(c["saves"][0]["s"] for c in clocks),
        total_bytes=sum(files.values()),
        shard_files=len(shards),
        rank_bytes_max=max(shards),
        rank_bytes_min=min(shards),
        meta_bytes=files.get("meta.pt", 0) + files.get(".metadata", 0),
        step_rss_max=max(c["step_rss"][0] for c in clocks),
        save_peak_rss_max=max(c["saves"][0]["peak"] for c in clocks),
        fit_max_rss_max=max(c["max_rss"] for c in clocks),
        params_checked=sum(int(v[0]) for v in saved.values()),
        built_on_meta=all(c["built_on_meta"] for c in clocks),
        adam_filled=all(v[2] != 0.0 and v[3] != 0.0 for v in saved.values() if v[4] > 0),
    )

    # 2. load at the same world size; 3. resume at another, train on and save there
    for key, ranks, steps in (("same", args.ranks, 0), ("other", args.resume_ranks, args.resume_steps)):
        run = f"{size}-load{key}"
        extra = ("--resume", str(folder), "--trainer.max_steps", str(1 + steps))
        wall, clocks = run_fit(args, fit_config(args, work, size, data_root, run), ranks, *extra)
        row.update(load_row(key, ranks, wall, clocks, saved))
        if steps:
            resaved = folder_files(work / run / "checkpoints" / f"step{1 + steps:08d}.ckpt")
            row[f"resave_{key}_s_max"] = max(c["saves"][-1]["s"] for c in clocks)
            row[f"resave_{key}_rank_bytes_max"] = max(b for n, b in resaved.items() if n.endswith(".distcp"))
            row[f"resave_{key}_shard_files"] = sum(n.endswith(".distcp") for n in resaved)
        shutil.rmtree(work / run)

    peaks = [args.ranks * row["fit_max_rss_max"], args.ranks * row["load_same_fit_max_rss_max"]]
    row["ram_peak_total_gb"] = max(*peaks, args.resume_ranks * row["load_other_fit_max_rss_max"]) / GB

    # 4. consolidate; 5. prune
    consolidated = consolidate_bench(args, folder, list(saved))
    ok, _ = compare_sums(saved, consolidated["sums"])
    row.update(consolidate_s=consolidated["s"], consolidated_bytes=consolidated["bytes"])
    row.update(consolidate_max_rss=consolidated["max_rss"], consolidated_state_equal=ok)
    row.update(prune_bench(folder, args.prune_copies, args.keep_last))
    shutil.rmtree(work / f"{size}-save")
    return row


def table_row(r: dict[str, Any]) -> dict[str, str]:
    cells = {"size": f"ViT-{r['size']}/{r['patch']}", "params": f"{r['params'] / 1e6:.0f} M"}
    if "skipped" in r:
        return {**cells, "total": f"~{12 * r['params'] / GB:.1f} GB (12 B/param)", "save": f"skipped: {r['skipped']}"}
    flag = lambda ok: "" if ok else " (MISMATCH)"  # noqa: E731
    return {
        **cells,
        "total": f"{r['total_bytes'] / GB:.2f} GB",
        "per_rank": f"{r['rank_bytes_min'] / GB:.2f}-{r['rank_bytes_max'] / GB:.2f} GB x {r['shard_files']}",
        "save": f"{r['save_s_max']:.1f} s",
        "load_same": f"{r['load_same_s_max']:.1f} s{flag(r['load_same_state_equal'])}",
        "load_other": f"{r['load_other_s_max']:.1f} s{flag(r['load_other_state_equal'])}",
        "consolidate": f"{r['consolidate_s']:.1f} s, {r['consolidated_bytes'] / GB:.2f} GB"
        + flag(r["consolidated_state_equal"]),
        "prune": f"{r['prune_s'] * 1000:.0f} ms" + ("" if r["prune_ok"] else " (WRONG)"),
        "rss": f"{r['step_rss_max'] / GB:.1f} / {r['save_peak_rss_max'] / GB:.1f} / "
        f"{r['load_same_peak_rss_max'] / GB:.1f} / {r['load_other_peak_rss_max'] / GB:.1f} GB",
    }


def notes(r: dict[str, Any], args) -> str:
    side = r["image"] // r["patch"]
    text = (
        f"- ViT-{r['size']}/{r['patch']}: {r['params']:,} params at {r['image']} px ({side}x{side} patches); at 224 px "
        f"{r['params_224']:,} ({r['encoder_params_224']:,} in the encoder), the same apart from "
        f"{', '.join(r['differ_from_224']) or 'nothing'}."
    )
    if "skipped" in r:
        return f"{text} Not run: {r['skipped']}."
    resave = ""
    if "resave_other_s_max" in r:
        resave = (
            f", then trained {r['load_other_steps_after']} step(s) and saved in {r['resave_other_s_max']:.1f} s as "
            f"{r['resave_other_shard_files']} shards of up to {r['resave_other_rank_bytes_max'] / GB:.2f} GB"
        )
    return (
        f"{text} Loaded state = saved state (weights and both AdamW moments, per parameter): at {args.ranks} ranks "
        f"{r['load_same_state_equal']}, at {args.resume_ranks} ranks {r['load_other_state_equal']}{resave}; "
        f"consolidated file {r['consolidated_state_equal']}. AdamW moments filled: {r['adam_filled']}; "
        f"encoder built on the meta device: {r['built_on_meta']}. RAM of all ranks together at the peak: "
        f"{r['ram_peak_total_gb']:.1f} GB (estimated {r['ram_estimate_gb']:.1f}); the resumed run's peak RSS per rank "
        f"{r['load_other_fit_max_rss_max'] / GB:.1f} GB (load, step, save); consolidation "
        f"{r['consolidate_max_rss'] / GB:.1f} GB. Pruning left {', '.join(r['prune_left'])}. Whole fits: "
        f"{r['fit_save_wall_s']:.0f} s (save run), {r['load_same_fit_wall_s']:.0f} s and "
        f"{r['load_other_fit_wall_s']:.0f} s (the resumed ones)."
    )


def report(rows: list[dict], args) -> None:
    print(
        f"## Sharded checkpoints on CPU processes (gloo): {args.objective}, saved at {args.ranks} ranks, resumed at "
        f"{args.ranks} and at {args.resume_ranks}\n"
    )
    columns = [
        ("size", "model"),
        ("params", "params"),
        ("total", "checkpoint"),
        ("per_rank", "per rank"),
        ("save", "save"),
        ("load_same", f"load at {args.ranks}"),
        ("load_other", f"load at {args.resume_ranks}"),
        ("consolidate", "consolidate"),
        ("prune", f"prune {args.prune_copies} -> {args.keep_last}"),
        ("rss", f"RSS/rank: step / save / load at {args.ranks} / at {args.resume_ranks}"),
    ]
    print(markdown_table([table_row(r) for r in rows], columns))
    print()
    for r in rows:
        print(notes(r, args))
    print(
        "\n(save and load: the slowest rank, ranks starting together; pruning hard-links the copies, so it times "
        "finding the checkpoints and unlinking folders, not the file system freeing their blocks)"
    )
    env = environment()
    for r in rows:
        print(json.dumps({**r, "env": env}))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [FIT_CHILD]:
        sys.exit(fit_child(argv[1:]))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["large", "huge"], choices=sorted(PATCH))
    p.add_argument("--ranks", type=int, default=4, help="CPU processes of the saving run")
    p.add_argument("--resume-ranks", type=int, default=None, help="CPU processes of the resumed run (default half)")
    p.add_argument("--resume-steps", type=int, default=1, help="steps the resumed run trains (and saves) after loading")
    p.add_argument("--objective", choices=sorted(CONFIGS), default="pacofr")
    p.add_argument("--init", choices=("meta", "full"), default="meta", help="encoder on the meta device, or whole")
    p.add_argument("--patches", type=int, default=4, help="patches per image side")
    p.add_argument("--prune-copies", type=int, default=5)
    p.add_argument("--keep-last", type=int, default=2)
    p.add_argument("--max-gb", type=float, default=16.0, help="skip a size whose RAM estimate exceeds this")
    p.add_argument("--malloc-mmap-threshold", type=int, default=4 << 20, help="glibc's, in the ranks (0: default)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per fit or consolidation")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = p.parse_args(argv)
    args.resume_ranks = args.resume_ranks or max(1, args.ranks // 2)
    work = Path(args.work or tempfile.mkdtemp(prefix="pacofr-ckpt-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        rows = [bench_size(args, size, work) for size in args.sizes]
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    report(rows, args)


if __name__ == "__main__":
    main()
