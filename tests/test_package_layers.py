"""No two packages of ``src/pacofr`` import each other, directly or through others: the package graph, read from the
source, has no cycle.

The rule, decided here:

- A node is a package directly under ``pacofr`` (``pacofr.eval``, ``pacofr.callbacks``, ...) or a top-level module
  (``pacofr.optim``, ``pacofr.hparams_session``, ...); ``pacofr`` itself (its ``__init__``) is a node too. Imports
  inside one package are not edges: ``tests/test_layers.py`` orders the modules within the layers.
- Every ``import`` statement of a module counts, wherever it stands: at module level, inside a function or a
  method, under ``if TYPE_CHECKING:``, in a ``try``. A lazy import hides a cycle from the interpreter, not from the
  design: the two packages still need each other, cannot be read, tested or moved apart, and the cycle bites as
  soon as someone moves the import to the top of the file. Relative imports are resolved.
- Not counted: names resolved at run time from strings (``importlib.import_module`` in ``pacofr.cli``'s command
  table, ``class_path`` in configs). Those are the plug-in points of the commands and configs, not dependencies of
  one package's code on another's.

A failure names each cycle (its strongly connected component) with the imports that make it.
"""

from __future__ import annotations

import ast
from collections import defaultdict

from source_imports import PACKAGE, imported_modules, module_name


def node_of(module: str) -> str:
    """The graph node of a module: ``pacofr.<x>`` for anything in package or module ``x``; ``pacofr`` itself."""
    return ".".join(module.split(".")[:2])


def package_graph() -> dict[str, dict[str, list[str]]]:
    """node -> imported node -> the imports that make that edge (``module:line imports target``)."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        graph[node_of(importer)]  # every node, with or without edges
        for target, line in imported_modules(path):
            if node_of(target) == node_of(importer):
                continue
            found = graph[node_of(importer)][node_of(target)]
            if f"{importer}:{line} imports {target}" not in found:  # `from a import b, c`: one line, one entry
                found.append(f"{importer}:{line} imports {target}")
    return graph


def strongly_connected_components(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm; every component, singletons included, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(set(edges) | {t for ts in edges.values() for t in ts}):
        if node not in index:
            visit(node)
    return components


def cycles(graph: dict[str, dict[str, list[str]]]) -> list[str]:
    """One report per component of more than one node: its members and the imports between them."""
    components = strongly_connected_components({node: set(targets) for node, targets in graph.items()})
    reports = []
    for component in components:
        if len(component) < 2:
            continue
        inside = [
            f"    {imp}" for node in component for target in component for imp in graph.get(node, {}).get(target, [])
        ]
        reports.append(" <-> ".join(component) + ":\n" + "\n".join(inside))
    return reports


def test_no_cycle_between_the_packages_of_pacofr():
    found = cycles(package_graph())
    assert not found, (
        "packages of src/pacofr import each other (move the shared piece to the lower package, or to a module of "
        "its own below both):\n" + "\n".join(found)
    )


def test_the_graph_is_read_from_the_source():
    """The graph is not vacuous: edges known to exist are found, including one from an import inside a function."""
    graph = package_graph()
    assert {"pacofr.data", "pacofr.models", "pacofr.objectives", "pacofr.eval", "pacofr.callbacks"} <= graph.keys()
    assert "pacofr.models" in graph["pacofr.objectives"]
    assert "pacofr.eval" in graph["pacofr.callbacks"]  # the online probe reads with eval's probes
    assert "pacofr" in graph["pacofr.run_folder"]  # `import pacofr` (the version)
    lazy = [
        (path, target)
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef)
        for inner in ast.walk(node)
        if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("pacofr.")
        for target in [inner.module]
        if node_of(target) != node_of(module_name(path))
    ]
    assert lazy, "no import inside a function found: the check of function-level imports is untested"
    path, target = lazy[0]
    assert node_of(target) in graph[node_of(module_name(path))]


def test_a_cycle_is_reported_with_its_imports():
    graph = {
        "pacofr.a": {"pacofr.b": ["pacofr.a.x:3 imports pacofr.b.y"]},
        "pacofr.b": {"pacofr.c": ["pacofr.b.y:5 imports pacofr.c"]},
        "pacofr.c": {"pacofr.a": ["pacofr.c:9 imports pacofr.a.x"]},
        "pacofr.d": {"pacofr.a": ["pacofr.d:1 imports pacofr.a"]},
    }
    (report,) = cycles(graph)
    assert report.startswith("pacofr.a <-> pacofr.b <-> pacofr.c:")
    assert "pacofr.c:9 imports pacofr.a.x" in report and "pacofr.d" not in report
