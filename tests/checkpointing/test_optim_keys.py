"""Optimiser state moves between layouts by parameter name: a run whose groups list the parameters in another
order (FSDP vs DDP, or a new version of the grouping) still gives each parameter its own Adam moments."""

from __future__ import annotations

import pytest
import torch

from pacofr.checkpointing.optim_keys import (
    OptimizerLayoutError,
    is_name_keyed,
    saved_group_names,
    to_name_keyed,
    to_positional,
)


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Linear(5, 3))


def trained(groups_of_names: list[tuple[str, list[str]]]) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    net = model()
    params = dict(net.named_parameters())
    opt = torch.optim.AdamW([{"params": [params[n] for n in names], "group": tag} for tag, names in groups_of_names])
    for _ in range(3):
        net(torch.randn(8, 4)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    return net, opt


SAVED = [("decay", ["0.weight", "1.weight"]), ("no_decay", ["0.bias", "1.bias"])]
REORDERED = [("decay", ["1.weight", "0.weight"]), ("no_decay", ["1.bias", "0.bias"])]


def moments_by_name(net: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    return {n: opt.state[p]["exp_avg"] for n, p in net.named_parameters()}


def test_positional_state_follows_names_into_a_reordered_optimiser():
    net, opt = trained(SAVED)
    state = opt.state_dict()
    names = saved_group_names(state, [names for _, names in SAVED])
    fresh = model()
    params = dict(fresh.named_parameters())
    other = torch.optim.AdamW([{"params": [params[n] for n in names], "group": t} for t, names in REORDERED])
    other.load_state_dict(to_positional(state, names, REORDERED))
    expected, got = moments_by_name(net, opt), moments_by_name(fresh, other)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    # loading by position instead would have crossed them (and fails here on shape, as it would silently not
    # for two parameters of one shape): the remap is what makes this work
    with pytest.raises((RuntimeError, ValueError)):
        crossed = model()
        cp = dict(crossed.named_parameters())
        o = torch.optim.AdamW([{"params": [cp[n] for n in ns], "group": t} for t, ns in REORDERED])
        o.load_state_dict(state)
        crossed(torch.randn(2, 4)).sum().backward()
        o.step()


def test_name_keyed_round_trip_and_detection():
    _, opt = trained(SAVED)
    state = opt.state_dict()
    names = [names for _, names in SAVED]
    named = to_name_keyed(state, names)
    assert is_name_keyed(named) and not is_name_keyed(state)
    assert saved_group_names(named, None) == names  # a name-keyed state carries its own names
    back = to_positional(named, names, SAVED)
    assert back["param_groups"] == state["param_groups"]
    for key, entry in state["state"].items():
        assert torch.equal(back["state"][key]["exp_avg_sq"], entry["exp_avg_sq"])


def test_a_group_that_changed_members_is_an_error_naming_them():
    _, opt = trained(SAVED)
    state = opt.state_dict()
    names = [names for _, names in SAVED]
    moved = [("decay", ["0.weight"]), ("no_decay", ["0.bias", "1.bias", "1.weight"])]
    with pytest.raises(OptimizerLayoutError, match=r"1\.weight"):
        to_positional(state, names, moved)
    with pytest.raises(OptimizerLayoutError, match="groups"):
        to_positional(state, names, SAVED[:1])
    with pytest.raises(OptimizerLayoutError, match="inconsistent"):
        saved_group_names(state, [["0.weight"], ["0.bias", "1.bias"]])
    assert saved_group_names(state, None) is None  # an old checkpoint without names: the caller decides
    twice = [["0.weight", "0.weight"], ["0.bias", "1.bias"]]
    with pytest.raises(OptimizerLayoutError, match="twice"):
        to_positional(state, twice, SAVED)
    orphan = {**state, "state": {**state["state"], 99: state["state"][0]}}
    with pytest.raises(OptimizerLayoutError, match="no group"):
        to_positional(orphan, names, SAVED)
