"""No import cycle among the package's modules.

The graph is built with ``ast`` from every module under ``benchmark/`` (subpackages included) and
counts every import of one of them wherever it is written: at the top of the module, inside a
function (the lazy imports that keep ``lorakv-bench --help`` fast), or under ``if TYPE_CHECKING:``.
A lazy import is still a dependency: two modules that import each other, even from inside
functions, cannot be read, tested or moved apart.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "benchmark"


def module_name(path: Path) -> str:
    """``benchmark/integrations/lm_eval_tasks/utils.py`` -> ``benchmark.integrations.lm_eval_tasks.utils`` (a package:
    its ``__init__``)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports anywhere in its code."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            # ``from . import runner`` imports a module; ``from .spec import load_spec`` a name of one
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # benchmark.protocol.spec.load_spec -> benchmark.protocol.spec
                target = target.rpartition(".")[0]
            if target and target != name and target != "benchmark":
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imported(p, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, str] = {}  # "open" while on the search path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_top_level_lazy_and_relative_imports():
    graph = import_graph()
    assert {"benchmark.config", "benchmark.trust.worker",
            "benchmark.protocol.evaluator"} <= graph["benchmark.protocol.runner"]  # top level
    assert "benchmark.protocol.runner" in graph["benchmark.trust.verify"]  # inside verify_result
    assert "benchmark.protocol.runner" in graph["benchmark.integrations.executors"]  # ``from ..protocol import runner``
    # ``from ...protocol.spec import``
    assert "benchmark.protocol.spec" in graph["benchmark.integrations.lm_eval_tasks.utils"]


@pytest.mark.parametrize("graph, cycle", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": {"b", "c"}, "c": set()}, ["b", "b"]),
])
def test_find_cycle(graph, cycle):
    assert find_cycle(graph) == cycle


def test_no_import_cycle_among_the_package_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
