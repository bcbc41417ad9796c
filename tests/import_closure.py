"""The project modules a stage imports, read from the source (every `import` anywhere in a module, not
only at the top, since stages import lazily; `if TYPE_CHECKING:` blocks excluded; the loss registry's
deferred "pipeline.module:Class" strings included). Tests hold dvc.yaml's code deps to it."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages")
DEFERRED = re.compile(r"^((?:pipeline|stages)(?:\.\w+)+):\w+$")


def module_file(name: str, root: Path = ROOT) -> Path | None:
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    return skipped


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Project modules `path` imports (a `from package import name` counts `package.name` if it is a module)."""
    tree = ast.parse(path.read_text())
    skipped = _type_checking_nodes(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names
                         if module_file(f"{node.module}.{alias.name}", root))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and DEFERRED.match(node.value):
            found.add(DEFERRED.match(node.value).group(1))
    return {name for name in found if name.split(".")[0] in PACKAGES and module_file(name, root)}


def closure(module: str, root: Path = ROOT) -> set[Path]:
    """Files (relative to `root`) that running `python -m module` can execute: the transitive imports and
    every parent package's __init__.py."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            parent = ".".join(parts[:i])
            if parent not in seen and module_file(parent, root):
                seen.add(parent)
                todo.extend(imported_modules(module_file(parent, root), root) - seen)
    return {module_file(name, root).relative_to(root) for name in seen}
