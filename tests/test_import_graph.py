"""The project's modules import each other without cycles (deferred imports inside functions count:
a cycle hidden in a function is still two modules that cannot be understood one without the other), and
the infrastructure (`pipeline.infra`: tracking, launching, code manifests) sits below the research code:
it imports none of it, and the research code and stages reach it through its facade only."""
from __future__ import annotations

import ast
from pathlib import Path

from pipeline.infra.code_manifest import imported_modules

ROOT = Path(__file__).resolve().parents[1]
INFRA = "pipeline.infra"


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


def every_import(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules ``path`` names in any import statement: at module level, inside functions, and under
    ``if TYPE_CHECKING:`` (which ``imported_modules`` leaves out, as a manifest should)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found & modules.keys()


def test_no_import_cycle_even_through_imports_for_type_checking():
    """Names imported for annotations only still tie two modules together (config and the launcher did)."""
    modules = project_modules()
    cycle = find_cycle({name: every_import(path, modules) - {name} for name, path in modules.items()})
    assert cycle is None, " -> ".join(cycle)


# The one research module tracking reads: the metric registry (a leaf, no imports of the project), which
# names each metric in MLflow.
INFRA_READS = {"pipeline.metrics"}


def test_the_infrastructure_imports_no_research_code():
    """Not even for annotations: the launcher describes the ``train`` section it reads as a Protocol."""
    modules = project_modules()
    for name, path in modules.items():
        if name == INFRA or name.startswith(f"{INFRA}."):
            outside = {m for m in every_import(path, modules)
                       if m != INFRA and not m.startswith(f"{INFRA}.") and m not in INFRA_READS}
            assert not outside, f"{name} imports {sorted(outside)}"


def test_research_code_and_stages_use_the_infrastructure_through_its_facade():
    modules = project_modules()
    for name, path in modules.items():
        if name != INFRA and not name.startswith(f"{INFRA}."):
            reached = {m for m in every_import(path, modules) if m.startswith(f"{INFRA}.")}
            assert not reached, f"{name} imports {sorted(reached)}; import them from {INFRA}"


def test_the_search_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# What a stage module may import: it parses a command line and calls the wiring layer. The stage
# specification (with the values it is built from, a replica and a setting) and the params schema are the
# only other parts of the library it sees.
STAGE_IMPORTS = {"pipeline.wiring", "pipeline.stage_spec", "pipeline.replica", "pipeline.setting", "pipeline.config"}


def test_stage_modules_import_only_the_wiring_the_spec_and_the_schema():
    for name, path in project_modules().items():
        if name.startswith("stages."):
            outside = {m for m in imported_modules(path, ROOT) - {name}
                       if not m.startswith("stages.") and not any(m == a or m.startswith(a + ".") for a in STAGE_IMPORTS)}
            assert not outside, f"{name} imports {sorted(outside)}"
