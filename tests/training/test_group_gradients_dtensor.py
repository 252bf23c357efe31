"""Per-group gradient norms and clipping on FSDP2 gradients (DTensors, ``fully_shard``): the same norms and
clipped gradients as on plain tensors. One process, a one-rank gloo group (the arithmetic path; the 2-process
FSDP2 runs are ``tests/checkpointing/test_fsdp2.py``)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn

from pacofr.training.group_gradients import clip_groups, group_grad_norms


@pytest.fixture
def one_rank_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def grads_of(model: nn.Module) -> torch.optim.Optimizer:
    torch.manual_seed(1)
    model(torch.randn(8, 6)).square().sum().backward()
    return torch.optim.SGD(
        [
            {"params": list(model[0].parameters()), "schedule": "main"},
            {"params": list(model[1].parameters()), "schedule": "codebook"},
        ],
        lr=0.1,
    )


def test_dtensor_gradients_give_the_plain_norms_and_clipping(one_rank_group) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 3))
    sharded = copy.deepcopy(plain)
    mesh = init_device_mesh("cpu", (1,))
    fully_shard(sharded[0], mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    opt_plain, opt_sharded = grads_of(plain), grads_of(sharded)
    assert isinstance(sharded[0].weight.grad, DTensor)
    expected, got = group_grad_norms(opt_plain), group_grad_norms(opt_sharded)
    assert expected.keys() == got.keys() == {"main", "codebook"}
    for tag in expected:
        assert torch.allclose(expected[tag], got[tag]), tag
    assert min(expected.values()) > 0.5  # both groups are clipped below
    clip_groups(opt_plain, expected, 0.5)
    clip_groups(opt_sharded, got, 0.5)
    for a, b in zip(plain.parameters(), sharded.parameters()):
        assert torch.allclose(a.grad, b.grad.full_tensor())
    assert group_grad_norms(opt_sharded)["main"] <= 0.5 + 1e-5
