"""The project's modules import each other without cycles (deferred imports inside functions count:
a cycle hidden in a function is still two modules that cannot be understood one without the other)."""
from __future__ import annotations

from pathlib import Path

from pipeline.infra.code_manifest import imported_modules

ROOT = Path(__file__).resolve().parents[1]


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in ("pipeline", "stages"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in `graph` (module -> modules it imports) as a path, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_among_project_modules():
    modules = project_modules()
    # A package's __init__ is not an edge to its submodules' importers: importing `a.b` runs `a` first,
    # but `a` importing nothing of `a.b` is what makes it a leaf.
    graph = {name: imported_modules(path, ROOT) - {name} for name, path in modules.items()}
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_search_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
