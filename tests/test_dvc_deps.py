"""dvc.yaml's code deps: every stage depends on its command's code manifest and on no code file
directly, the `code` stage writes a manifest for every stage command, the manifests hold each command's
import closure (lazy imports included), and a stage that imports code its manifest misses fails."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.infra.code_manifest import closure, manifest, manifest_path
from pipeline.wiring.code import stage_modules

ROOT = Path(__file__).resolve().parents[1]
CODE_ROOTS = ("pipeline", "stages")


def stage_entries(dvc_yaml: dict) -> dict[str, dict]:
    """Stage name -> its definition (foreach / matrix templates by their `do` body)."""
    return {name: stage.get("do", stage) for name, stage in dvc_yaml["stages"].items()}


def command_module(entry: dict) -> str:
    return re.search(r"python -m (stages\.\w+)", entry["cmd"]).group(1)


def dvc_yaml() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def test_every_stage_depends_on_its_commands_manifest_and_on_no_code_file():
    for name, entry in stage_entries(dvc_yaml()).items():
        deps = [d for d in entry.get("deps", []) if isinstance(d, str)]
        if name == "code":
            assert sorted(deps) == ["pipeline", "stages"]
            continue
        code = [d for d in deps if d.split("/")[0] in CODE_ROOTS or d.startswith("manifests")]
        assert code == [str(manifest_path(command_module(entry)))], f"{name}: code deps {code}"


def test_the_code_stage_writes_a_manifest_for_every_stage_command():
    commands = {command_module(entry) for name, entry in stage_entries(dvc_yaml()).items() if name != "code"}
    assert commands <= set(stage_modules(ROOT))
    assert all(m.startswith("stages.") for m in stage_modules(ROOT))


@pytest.mark.parametrize("module", ["stages.teacher", "stages.evaluate", "stages.report"])
def test_the_closure_follows_lazy_imports(module):
    """Stages import inside functions (start-up cost); those imports count, TYPE_CHECKING ones do not."""
    files = closure(module, ROOT)
    assert Path("pipeline/wiring/common.py") in files and Path("pipeline/config.py") in files
    if module == "stages.evaluate":
        assert Path("pipeline/eval/protocol.py") in files and Path("pipeline/train/loop.py") not in files
    if module == "stages.report":  # pipeline/eval/session.py names RunLogger under TYPE_CHECKING only
        assert Path("pipeline/train/loop.py") not in files


def test_a_manifest_changes_with_the_code_and_not_with_a_docstring(tmp_path):
    for package in CODE_ROOTS:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    before = manifest("stages.report", tmp_path)
    knn = tmp_path / "pipeline/eval/knn.py"
    knn.write_text(knn.read_text().replace('"""', '"""Reworded. ', 1))
    assert manifest("stages.report", tmp_path) == before  # docstrings are not code
    report = tmp_path / "pipeline/report.py"
    report.write_text(report.read_text() + "\n_EDITED = True\n")
    after = manifest("stages.report", tmp_path)
    assert {path for path in after if after[path] != before[path]} == {"pipeline/report.py"}


def test_a_stage_that_imports_code_its_manifest_misses_fails_naming_the_file(tmp_path):
    """The runtime check of `pipeline.wiring.common.run_stage`: under DVC (DVC_STAGE set) a stage whose process
    imported a project file its manifest does not list exits 1 and names the file."""
    for package in CODE_ROOTS:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "stages/probe.py").write_text(
        "from pipeline.wiring.common import run_stage\n\n\n"
        "def main(argv):\n    import importlib\n\n    importlib.import_module('pipeline.stats')\n\n\n"
        "if __name__ == '__main__':\n    run_stage(main)\n")
    env = {**os.environ, "DVC_STAGE": "probe", "PYTHONPATH": str(tmp_path)}

    def run() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "stages.probe"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)

    subprocess.run([sys.executable, "-m", "stages.code"], cwd=tmp_path, env=env, check=True, timeout=120)
    listed = json.loads((tmp_path / manifest_path("stages.probe")).read_text())["files"]
    assert "pipeline/stats.py" not in listed  # importlib hides it from the reading
    result = run()
    assert result.returncode == 1 and "pipeline/stats.py" in result.stderr, result.stderr
    (tmp_path / "stages/probe.py").write_text((tmp_path / "stages/probe.py").read_text().replace(
        "    import importlib\n\n    importlib.import_module('pipeline.stats')\n", "    import pipeline.stats  # noqa: F401\n"))
    subprocess.run([sys.executable, "-m", "stages.code"], cwd=tmp_path, env=env, check=True, timeout=120)
    assert run().returncode == 0


def test_the_lock_file_holds_only_stages_dvc_yaml_defines():
    """DVC never prunes dvc.lock: a stage that leaves dvc.yaml (a grid entry removed, a stage renamed) keeps
    its entry, which every `dvc repro` then parses and rewrites after each stage, and which misdescribes the
    committed run. Prune with: keep the names `dvc stage list --name-only` prints."""
    listed = subprocess.run([str(Path(sys.executable).with_name("dvc")), "stage", "list", "--name-only"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    locked = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    assert listed and not sorted(set(locked) - set(listed))
