"""``pacofr checkpoint consolidate``: a sharded checkpoint written by 2 gloo processes with
torch.distributed.checkpoint in Lightning's FSDP layout (model and optimiser as DTensor shards, the rest in
``meta.pt``) becomes one file whose weights and optimiser state equal the originals, and whose optimiser state
loads into a plain (DDP-style) optimiser. The shards come from DTensors here, so the layout is checked on its
own; test_fsdp_cpu.py consolidates what a real FSDP run wrote and resumes it under DDP."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

from pacofr.checkpointing.resolve import checkpoint_global_step, resolve_resume
from pacofr.cli import main as pacofr_main

WORLD = 2


def full_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.LayerNorm(10), torch.nn.Linear(10, 3))


def trained_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Weights after two AdamW steps with two parameter groups, and the optimiser state keyed by name (FSDP)."""
    model = full_model()
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    groups = [
        {"params": [params[n] for n in names if n.endswith("weight")], "weight_decay": 0.05},
        {"params": [params[n] for n in names if n.endswith("bias")], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=1e-2)
    for _ in range(2):
        model(torch.randn(4, 6)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    by_position = opt.state_dict()
    order = [n for n in names if n.endswith("weight")] + [n for n in names if n.endswith("bias")]
    named = {
        "state": {order[i]: s for i, s in by_position["state"].items()},
        "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in by_position["param_groups"]],
    }
    return {f"model.{k}": v for k, v in model.state_dict().items()}, named


def _shard(value, mesh):
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        return distribute_tensor(value, mesh, [Shard(0)])
    if isinstance(value, dict):
        return {k: _shard(v, mesh) for k, v in value.items()}
    return value


def _write_shards(rank: int, folder: str, init_file: str, weights_key: str = "model") -> None:
    from lightning.fabric.strategies.fsdp import _distributed_checkpoint_save

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        mesh = init_device_mesh("cpu", (WORLD,))
        weights, optim = trained_state()
        converted = {
            weights_key: _shard(weights, mesh),
            "optimizer_0": {**optim, "state": _shard(optim["state"], mesh)},
        }
        _distributed_checkpoint_save(converted, Path(folder))  # Lightning's own writer for sharded FSDP state
        if rank == 0:
            torch.save({"global_step": 12, "epoch": 0, "loops": {}}, Path(folder) / "meta.pt")
            # the unsharded originals, from this process: recomputing them in the test process could differ in
            # the last bit (another thread count changes float summation order)
            torch.save({"weights": weights, "optim": optim}, Path(folder).parent / "reference.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("weights_key", ["model", "state_dict"])  # FSDP1's folder; ModelParallelStrategy's (FSDP2)
def test_consolidate_round_trip(tmp_path, weights_key):
    sharded = tmp_path / "checkpoints" / "step00000012.ckpt"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_write_shards, args=(str(sharded), str(tmp_path / "pg-init"), weights_key), nprocs=WORLD, join=True)
    assert len(list(sharded.glob("*.distcp"))) == WORLD  # one shard file per rank: really sharded
    assert checkpoint_global_step(sharded) == 12
    assert resolve_resume("auto", sharded.parent) == sharded  # --resume auto sees sharded folders

    out = tmp_path / "consolidated.ckpt"
    assert pacofr_main(["checkpoint", "consolidate", str(sharded), "--out", str(out)]) == 0
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    reference = torch.load(sharded.parent / "reference.pt", map_location="cpu", weights_only=True)
    weights, named_optim = reference["weights"], reference["optim"]
    assert ckpt["global_step"] == 12 and ckpt["state_dict"].keys() == weights.keys()
    assert all(torch.equal(ckpt["state_dict"][k], v) for k, v in weights.items())

    # the optimiser state is positional now and loads into the plain optimiser of a DDP-style run
    model = full_model()
    model.load_state_dict({k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()})
    params = dict(model.named_parameters())
    groups = [
        {"params": [p for n, p in params.items() if n.endswith("weight")], "weight_decay": 0.05},
        {"params": [p for n, p in params.items() if n.endswith("bias")], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=1e-2)
    opt.load_state_dict(ckpt["optimizer_states"][0])
    order = [n for n in params if n.endswith("weight")] + [n for n in params if n.endswith("bias")]
    for name in order:
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[params[name]][key], named_optim["state"][name][key]), (name, key)

    weights_only = tmp_path / "weights.ckpt"
    assert pacofr_main(["checkpoint", "consolidate", str(sharded), "--out", str(weights_only), "--weights_only"]) == 0
    assert set(torch.load(weights_only, weights_only=True)) == {"state_dict", "global_step", "epoch"}


def test_consolidate_refuses_an_incomplete_folder(tmp_path):
    import pytest

    from pacofr.checkpointing.consolidate import consolidate
    from pacofr.checkpointing.resolve import CheckpointUnreadable

    (tmp_path / "half").mkdir()
    with pytest.raises(CheckpointUnreadable, match="not a complete"):
        consolidate(tmp_path / "half", tmp_path / "out.ckpt")
    assert not (tmp_path / "out.ckpt").exists()
