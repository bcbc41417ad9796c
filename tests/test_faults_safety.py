"""Safety rules checked on the source and the docs: no file is unpickled with code, names from params.yaml
cannot build paths outside outputs/, the documented MLflow UI listens on localhost only.

(The stage-level side: tests/test_faults_input.py runs path-like names and a code-carrying pickle through
the real stages.)
"""
from __future__ import annotations

import ast
import copy
import re

import pytest

from faults_support import ROOT, tiny_params

pytestmark = pytest.mark.faults

SOURCES = sorted(p for folder in ("pipeline", "stages") for p in (ROOT / folder).rglob("*.py"))
UNPICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "shelve", "marshal", "cloudpickle"}


def calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def dotted(node: ast.AST) -> str:
    """`torch.load` for the call target torch.load, '' for anything not a plain dotted name."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def keyword_is(call: ast.Call, name: str, value) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def test_the_source_scan_sees_the_project():
    names = {p.relative_to(ROOT).as_posix() for p in SOURCES}
    assert {"pipeline/train/checkpoint.py", "pipeline/models/embedding_model.py", "pipeline/wiring/common.py"} <= names


def test_every_torch_load_passes_weights_only_true():
    found, unsafe = 0, []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):  # `from torch import load` would hide a call from the check below
            if isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization"):
                assert "load" not in {a.name for a in node.names}, f"{path}: import torch.load by name"
        for call in calls(tree):
            if dotted(call.func) in ("torch.load", "torch.serialization.load"):
                found += 1
                if not keyword_is(call, "weights_only", True):
                    unsafe.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert found >= 3, "the scan no longer finds the checkpoint loads"  # checkpoint, model, backbone weights
    assert not unsafe, f"torch.load without weights_only=True at {unsafe}"


def test_nothing_unpickles_files():
    offences = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                offences += [f"{where}:{node.lineno} import {a.name}" for a in node.names
                             if a.name.split(".")[0] in UNPICKLING_MODULES]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNPICKLING_MODULES:
                offences.append(f"{where}:{node.lineno} from {node.module}")
        for call in calls(tree):
            name = dotted(call.func)
            if name in ("np.load", "numpy.load") and keyword_is(call, "allow_pickle", True):
                offences.append(f"{where}:{call.lineno} {name}(allow_pickle=True)")
            if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "torch.jit.load", "eval", "exec"):
                offences.append(f"{where}:{call.lineno} {name}(...)")
    assert not offences, offences


def test_the_scan_would_catch_an_unsafe_load():
    """The checks above are not vacuous: they flag the unsafe forms in a snippet."""
    tree = ast.parse("import pickle\ntorch.load(p)\ntorch.load(p, weights_only=False)\nnp.load(p, allow_pickle=True)\n")
    loads = [c for c in calls(tree) if dotted(c.func) == "torch.load"]
    assert len(loads) == 2 and not any(keyword_is(c, "weights_only", True) for c in loads)
    assert any(isinstance(n, ast.Import) and n.names[0].name == "pickle" for n in ast.walk(tree))
    assert any(dotted(c.func) == "np.load" and keyword_is(c, "allow_pickle", True) for c in calls(tree))


@pytest.mark.parametrize("section", ["teachers", "students", "losses"])
@pytest.mark.parametrize("name", ["..", "../outside", "a/b", "/etc", "a\\b", ".hidden", "Upper", "a b", "a-b", "", "x\n"])
def test_names_that_could_leave_the_outputs_folder_are_refused(section, name):
    """Names become folders (outputs/teachers/NAME, outputs/students/T-S-L): only [a-z0-9_] may pass.
    `a-b` is refused too: '-' separates teacher, student and loss in a student folder's name."""
    from pipeline.config import ConfigError, validate_params

    params = tiny_params()
    old = {"teachers": "simclr", "students": "small", "losses": "relaxed"}[section]
    params[section] = {name if k == old else k: v for k, v in params[section].items()}
    for setting in ("self_supervised", "metric_learning"):
        field = section[:-1] if section != "losses" else "loss"
        grid = params["transfer"][setting]["grid"]
        grid[field] = [name if n == old else n for n in grid[field]]
    with pytest.raises(ConfigError, match=re.escape(section)):
        validate_params(copy.deepcopy(params))


def test_plain_names_are_accepted():
    from pipeline.config import validate_params

    params = tiny_params()
    params["teachers"]["simclr_2"] = params["teachers"].pop("simclr")
    params["transfer"]["self_supervised"]["grid"]["teacher"] = ["simclr_2"]
    params["transfer"]["self_taught"]["grid"]["teacher"] = ["simclr_2"]
    assert "simclr_2" in validate_params(params).teachers


def test_documented_mlflow_ui_command_binds_localhost_only():
    """The README and the docs/ pages it links (docs/pipeline.md opens the UI, docs/team-scale.md runs a server)."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    text = "\n".join(page.read_text() for page in pages)
    commands = [line for line in text.splitlines() if re.search(r"\bmlflow (ui|server)\b", line)]
    assert any(re.search(r"\bmlflow ui\b", line) for line in commands), "the docs no longer say how to open the MLflow UI"
    for line in commands:
        assert "--host 127.0.0.1" in line, line
    assert "0.0.0.0" not in text
