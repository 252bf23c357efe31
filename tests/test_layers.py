"""The package reads bottom-up: every import inside ``src/pacofr`` (at module top or inside a function) goes to
the same layer or one below, and no modules import each other in a cycle (docs/architecture.md draws the
layers)."""

from __future__ import annotations

from pathlib import Path

import pytest
from source_imports import SRC, imported_modules, module_name

# lowest first; a module belongs to the longest prefix that names it
LAYERS: list[tuple[str, ...]] = [
    # utilities; the run folder's files (its config and facts, its HPARAMS session)
    ("pacofr", "pacofr.errors", "pacofr.logs", "pacofr.cli_parser", "pacofr.run_folder", "pacofr.hparams_session"),
    ("pacofr.data.format", "pacofr.data.batch"),  # the contract: the shard format and the batch schema
    ("pacofr.data",),  # reading shards into batches
    ("pacofr.masking", "pacofr.losses", "pacofr.optim"),  # masks on the batch schema; losses; the optimiser recipe
    ("pacofr.models",),  # model parts
    ("pacofr.objectives",),  # one method per file: model parts + loss
    ("pacofr.checkpointing", "pacofr.strategies", "pacofr.training"),  # training any objective
    ("pacofr.eval",),  # evaluation: benchmark readers, probes, the eval module
    ("pacofr.callbacks",),  # training monitors (the online probe reads with eval's probes)
    ("pacofr.study", "pacofr.export", "pacofr.cli"),  # commands
]


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, f"{module} is in no layer: add it to LAYERS"
    return rank


def imports_of(path: Path) -> set[str]:
    """pacofr modules ``path`` imports anywhere in the file, top or function level."""
    return {target for target, _ in imported_modules(path)}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) - {module_name(p)} for p in sorted((SRC / "pacofr").rglob("*.py"))}


def test_every_import_goes_to_the_same_layer_or_below():
    upward = []
    for module, targets in graph().items():
        for target in targets:
            if layer_of(target) > layer_of(module):
                upward.append(f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})")
    assert not upward, "imports that go up a layer:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    edges = graph()
    # a package's __init__ importing its own modules is not a cycle of design; leave those edges out
    edges = {
        m: {t for t in ts if not (m == t.rsplit(".", 1)[0] and (SRC / Path(*m.split("."))).is_dir())}
        for m, ts in edges.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt in edges and state.get(nxt) is None:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if state.get(start) is None:
            cycle = visit(start)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("name", ["inspect", "modules", "fsdp_calls", "host_reader"])
def test_no_unclear_or_shadowing_module_names(name: str):
    repo = SRC.parent
    clashes = [p for p in [*SRC.rglob(f"{name}.py"), *SRC.rglob(name), *(repo / "data_prep").rglob(f"{name}.py")]]
    assert not clashes, clashes
