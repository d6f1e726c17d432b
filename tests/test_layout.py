"""The shape of edge/: no import cycle, no build-time dependency (torch, export/), rooms of a readable size.

Read from the source (AST), not from ``sys.modules``: every ``import`` statement counts, at module
level, inside functions, and under ``TYPE_CHECKING``, so a cycle hidden in a lazy import is found too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

EDGE = Path(__file__).resolve().parents[1] / "edge"
FORBIDDEN = ("torch", "export")  # build-time only: the store box installs neither
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = path.relative_to(EDGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def edge_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(EDGE.rglob("*.py"))}


def imported_names(path: Path) -> Iterator[str]:
    """Every absolute module an ``import`` statement in ``path`` names (``from a import b`` gives a and a.b)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


def import_graph() -> dict[str, set[str]]:
    """edge module -> the edge modules it imports (``from pkg import mod`` counts as importing mod)."""
    modules = edge_modules()
    return {name: {t for t in imported_names(path) if t in modules and t != name} for name, path in modules.items()}


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None when the graph has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_cycle_finder_names_the_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_edge_has_no_import_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 30 and "edge.pipeline.loop" in graph  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in edge/: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("forbidden", FORBIDDEN)
def test_edge_never_imports_build_time_packages(forbidden: str) -> None:
    offenders = sorted(name for name, path in edge_modules().items()
                       if any(t == forbidden or t.startswith(forbidden + ".") for t in imported_names(path)))
    assert offenders == [], f"edge/ modules import {forbidden}: {offenders}"


def test_modules_and_functions_stay_readable() -> None:
    """A module over ~400 lines or a function over ~60 is a room doing too much: split it."""
    long_modules, long_functions = [], []
    for name, path in edge_modules().items():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules.append(f"{name} ({text.count(chr(10))} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{name}.{node.name} ({n} lines)")
    assert long_modules == [] and long_functions == [], (long_modules, long_functions)
