"""Which project code each stage command can run, and a digest of it: what DVC re-runs a stage on.

Why a manifest instead of listing each stage's modules in dvc.yaml: DVC rewrites the whole of dvc.lock
after every stage it runs (a round-trip YAML parse and dump, treeverse/dvc#10629), and 40-odd code deps
per stage made 63% of a 232 KB lock: 5.3 s of DVC per stage here, more than most stages' start-up, and
growing with the square of the stage count (the multi-seed study has over a hundred stages). So the
`code` stage writes, per stage module, ``manifests/<module>.json``: every file of its import closure
with the digest of its code; each stage depends on its module's manifest only. A change to a file
rewrites exactly the manifests of the commands that import it, so DVC still re-runs exactly the stages
a code change can affect, with one dep per stage in the lock.

The closure is read from the source: every `import` anywhere in a module (stages import lazily), not
those under `if TYPE_CHECKING:`, plus the loss registry's deferred ``"pipeline.module:Class"`` strings.
`pipeline.wiring.common.run_stage` checks at the end of every stage that the process imported nothing outside
its manifest, so an import this reading misses fails loudly instead of leaving a stale stage cached.
The digest is of the syntax tree without docstrings (`normalised_code`): a comment, docstring or
formatting edit re-runs nothing, any change to what runs does (the checkpoint fingerprint agrees).
"""
from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import re
import sys
from pathlib import Path

PACKAGES = ("pipeline", "stages")
MANIFEST_DIR = Path("manifests")
_DEFERRED = re.compile(r"^((?:pipeline|stages)(?:\.\w+)+):\w+$")


def manifest_path(module: str) -> Path:
    """``manifests/<stage module>.json``, e.g. ``manifests/stages.transfer.json``."""
    return MANIFEST_DIR / f"{module}.json"


def normalised_code(source: str | ast.AST) -> str:
    """The module's syntax tree without docstrings (line numbers left out of the dump)."""
    tree = ast.parse(source) if isinstance(source, str) else source
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def code_digest(path: str | Path) -> str:
    return _parsed(path)[1]


def module_file(name: str, root: Path) -> Path | None:
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, root: Path) -> set[str]:
    """Project modules `path` imports (a `from package import name` counts `package.name` if it is a module)."""
    found = _parsed(path)[0]
    return {name for name in found if name.split(".")[0] in PACKAGES and module_file(name, root)}


def _parsed(path: str | Path) -> tuple[frozenset[str], str]:
    """(every module name `path` may import, its code digest), parsed once per version of the file."""
    path = Path(path).resolve()
    stat = path.stat()
    return _read(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=None)
def _read(path: Path, mtime_ns: int, size: int) -> tuple[frozenset[str], str]:
    tree = ast.parse(path.read_text())
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and any(getattr(n, "id", getattr(n, "attr", None)) == "TYPE_CHECKING"
                                            for n in ast.walk(node.test)):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _DEFERRED.match(node.value):
            found.add(_DEFERRED.match(node.value).group(1))
    return frozenset(found), hashlib.sha256(normalised_code(tree).encode()).hexdigest()


def closure(module: str, root: Path = Path(".")) -> set[Path]:
    """Files (relative to `root`) that `python -m module` can execute: its transitive imports and every
    parent package's __init__.py."""
    root = Path(root)
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


def manifest(module: str, root: Path = Path(".")) -> dict[str, str]:
    """{file of `module`'s closure: its code digest}, sorted by path."""
    return {str(path): code_digest(Path(root) / path) for path in sorted(closure(module, root))}


def write_manifest(module: str, root: Path = Path(".")) -> Path:
    """Write `module`'s manifest atomically (same code, same bytes: DVC then sees an unchanged dep)."""
    path = Path(root) / manifest_path(module)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"module": module, "files": manifest(module, root)}, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def imported_project_modules() -> dict[str, str]:
    """Module name -> source file of every project module (`PACKAGES`) this process has imported so far:
    what `unlisted_imports` checks against a manifest and the checkpoint fingerprint digests."""
    found = {}
    for name, loaded in sorted(sys.modules.items()):
        file = getattr(loaded, "__file__", None)
        if name.split(".")[0] in PACKAGES and file and file.endswith(".py"):
            found[name] = file
    return found


def unlisted_imports(module: str, root: Path = Path(".")) -> list[str]:
    """Project files this process has imported that `module`'s manifest does not list ([] without a
    manifest: a stage run by hand outside DVC)."""
    path = Path(root) / manifest_path(module)
    if not path.is_file():
        return []
    listed = set(json.loads(path.read_text())["files"])
    root = Path(root).resolve()
    imported = set()
    for file in imported_project_modules().values():
        try:
            imported.add(str(Path(file).resolve().relative_to(root)))
        except ValueError:  # a module of the same name from elsewhere (not this checkout's code)
            continue
    return sorted(imported - listed)
