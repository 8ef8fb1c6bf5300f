"""Imports inside leanlm.bis flow one way: no module imports (even lazily, inside a function) a module that
imports it back. The package ``__init__`` (the public re-exports) is left out: it imports, nothing imports it."""

from __future__ import annotations

import ast
from pathlib import Path

import leanlm.bis

PKG = Path(leanlm.bis.__file__).parent


def import_graph() -> dict[str, set[str]]:
    """module -> the leanlm.bis modules it imports anywhere in its source (top level or in functions)."""
    modules = {p.stem for p in PKG.glob("*.py") if p.stem not in ("__init__", "__main__")}
    graph: dict[str, set[str]] = {}
    for name in modules:
        deps: set[str] = set()
        for node in ast.walk(ast.parse((PKG / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "leanlm.bis":  # from leanlm.bis import single_pass
                    deps |= {a.name for a in node.names if a.name in modules}
                elif node.module.startswith("leanlm.bis."):
                    deps.add(node.module.split(".")[2])
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[2] for a in node.names if a.name.startswith("leanlm.bis.")}
        graph[name] = deps - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                return [*stack[stack.index(d):], d]
            if d not in state and (c := visit(d)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_bis_imports_are_acyclic() -> None:
    graph = import_graph()
    assert {"select", "cut", "config", "engines", "executor", "writers", "manifest"} <= set(graph)
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"
    # the rules and the settings are leaves of the selection machinery
    assert graph["cut"] <= {"score"}
    assert graph["config"] <= {"scan", "schema", "score"}
