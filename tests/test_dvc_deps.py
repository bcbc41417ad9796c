"""dvc.yaml's code deps equal what each stage command runs: every project module in the import closure
of `python -m stages.X` is covered by a dep (a folder dep covers its files), and no dep names code the
stage does not import, so DVC re-runs exactly the stages a code change can affect."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from import_closure import ROOT, closure

CODE_ROOTS = ("pipeline", "stages")


def stage_entries(dvc_yaml: dict) -> dict[str, dict]:
    """Stage name -> its definition (foreach / matrix templates by their `do` body)."""
    entries = {}
    for name, stage in dvc_yaml["stages"].items():
        entries[name] = stage.get("do", stage)
    return entries


def code_deps(entry: dict) -> list[str]:
    return [d for d in entry.get("deps", []) if isinstance(d, str) and d.split("/")[0] in CODE_ROOTS]


def covered(path: Path, deps: list[str]) -> bool:
    return any(path == Path(dep) or Path(dep) in path.parents for dep in deps)


def python_files(dep: str) -> set[Path]:
    target = ROOT / dep
    files = [target] if target.is_file() else target.rglob("*.py")
    return {p.relative_to(ROOT) for p in files if "__pycache__" not in p.parts}


def minimal_deps(files: set[Path]) -> list[str]:
    """The shortest dep list covering exactly `files`: a folder where all its .py files are in the set."""
    deps: list[str] = []
    for path in sorted(files):
        folder = next((parent for parent in reversed(path.parents[:-1])
                       if python_files(str(parent)) <= files), None)
        dep = str(folder) if folder is not None else str(path)
        if dep not in deps:
            deps.append(dep)
    return deps


def check(dvc_yaml: dict) -> list[str]:
    problems = []
    for name, entry in stage_entries(dvc_yaml).items():
        module = re.search(r"python -m (stages\.\w+)", entry["cmd"]).group(1)
        needed = closure(module)
        deps = code_deps(entry)
        missing = sorted(str(p) for p in needed if not covered(p, deps))
        extra = sorted(f"{d} ({', '.join(str(p) for p in sorted(python_files(d) - needed))})"
                       for d in deps if not python_files(d) <= needed)
        if missing:
            problems.append(f"{name}: missing deps {missing}; minimal: {minimal_deps(needed)}")
        if extra:
            problems.append(f"{name}: deps on code it does not import: {extra}")
    return problems


def test_every_stage_depends_on_exactly_the_code_it_imports():
    problems = check(yaml.safe_load((ROOT / "dvc.yaml").read_text()))
    assert not problems, "\n".join(problems)


def test_the_check_catches_a_missing_and_an_unused_dep():
    dvc_yaml = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    report = dvc_yaml["stages"]["report"]
    report["deps"] = [d for d in report["deps"] if d != "pipeline/report.py"] + ["pipeline/train/loop.py"]
    problems = " ".join(check(dvc_yaml))
    assert "report: missing deps" in problems and "pipeline/report.py" in problems
    assert "pipeline/train/loop.py" in problems


@pytest.mark.parametrize("module", ["stages.teacher", "stages.evaluate", "stages.report"])
def test_the_closure_follows_lazy_imports(module):
    """Stages import inside functions (start-up cost); those imports count."""
    files = closure(module)
    assert Path("stages/common.py") in files and Path("pipeline/config.py") in files
    if module == "stages.evaluate":
        assert Path("pipeline/eval/protocol.py") in files and Path("pipeline/train/loop.py") not in files


def test_the_lock_file_holds_only_stages_dvc_yaml_defines():
    """DVC never prunes dvc.lock: a stage that leaves dvc.yaml (a grid entry removed, a stage renamed) keeps
    its entry, which every `dvc repro` then parses (a no-op repro spent most of its time in YAML) and which
    misdescribes the committed run. Prune with: keep the names `dvc stage list --name-only` prints."""
    import subprocess
    import sys

    listed = subprocess.run([str(Path(sys.executable).with_name("dvc")), "stage", "list", "--name-only"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    locked = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    assert listed and not sorted(set(locked) - set(listed))
