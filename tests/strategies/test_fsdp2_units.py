"""The FSDP2 preset's pieces, in one process or two, without Lightning: which parameters ``shard_objective`` shards
and which it keeps whole, what a sharded PaCo-FR returns in incubation, and the gradient average of the parameters
kept whole (what DDP's all-reduce gives them). The whole preset, trained and resumed:
tests/checkpointing/test_fsdp2.py."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny_training import tiny_objective
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy
from torch.distributed.tensor import DTensor

from pacofr.strategies.fsdp2 import replicated_parameters, shard_objective
from pacofr.training.group_gradients import reduce_replicated_grads
from pacofr.training.synthetic_batches import synthetic_batches


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def one_rank(monkeypatch):
    # monkeypatch: a MASTER_PORT left in os.environ would be inherited by later tests' `pacofr fit` processes,
    # whose ranks would then meet on this stale port instead of a free one
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield init_device_mesh("cpu", (1,), mesh_dim_names=("shard",))
    dist.destroy_process_group()


def test_the_codebook_stays_whole_and_the_rest_is_sharded(one_rank):
    torch.manual_seed(0)
    objective = tiny_objective("pacofr", incubation_steps=2, spatial_weight=0.1, covered_weight=0.3)
    bf16 = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    shard_objective(objective, one_rank, bf16)
    whole = {id(p) for p in replicated_parameters(objective)}
    assert whole and len(whole) == sum(1 for _ in objective.codebook.parameters())
    for name, p in objective.named_parameters():
        assert isinstance(p, DTensor) != (id(p) in whole), name
    # incubation: only the codebook trains; the idle blocks (their forward does not run) join through local shards,
    # and the loss stays a plain tensor (it was a DTensor, which the all-ranks finite flag's all_reduce refused)
    batch = synthetic_batches(objective, batch=2, count=1, seed=1)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as in training: the blocks hand bf16 on to fp32 layers
        total, terms, _ = objective(batch, 0)
        assert type(total) is torch.Tensor and torch.isfinite(total)
        total.backward()
        assert all(p.grad is not None for p in objective.codebook.parameters() if p.requires_grad)
        after = objective(batch, 5)[0]  # after incubation: every part runs
    assert type(after) is torch.Tensor and torch.isfinite(after)


def _average(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        a, b, c = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
        a.grad = torch.full((3,), float(rank + 1))  # 1 and 2: mean 1.5
        b.grad = torch.ones(3) * 4 if rank == 0 else None  # one rank only: counts zero on the other, mean 2
        # c has no gradient anywhere: it keeps none (the optimiser skips it, as under DDP)
        reduce_replicated_grads([a, b, c], world_size=2)
        assert torch.equal(a.grad, torch.full((3,), 1.5))
        assert b.grad is not None and torch.equal(b.grad, torch.full((3,), 2.0))
        assert c.grad is None
    finally:
        dist.destroy_process_group()


def test_whole_parameters_get_the_gradient_average_over_ranks():
    # fork: no re-import of this module in the children (seconds, not the minute spawn takes on a loaded machine)
    mp.start_processes(_average, args=(free_port(),), nprocs=2, join=True, start_method="fork")
