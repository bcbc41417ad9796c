"""dvc.yaml is generated from pipeline/stage_spec.py, and what the spec declares is what DVC runs: a hand
edit of dvc.yaml fails the check, and a student added with its Table 1 role reaches its stage, its paths
and its report block without editing any module."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.replica import replicas
from pipeline.setting import Setting
from pipeline.stage_spec import render

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def check(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.stage_spec", "--check"], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)


def test_the_committed_dvc_yaml_is_the_generated_one():
    assert (ROOT / "dvc.yaml").read_text() == render(), "run: python -m pipeline.stage_spec"


def test_a_hand_edit_of_dvc_yaml_fails_the_check(tmp_path):
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    assert check(tmp_path).returncode == 0
    text = (tmp_path / "dvc.yaml").read_text()
    (tmp_path / "dvc.yaml").write_text(text.replace("      - evaluation\n", "", 1).replace("- evaluation\n", "", 1))
    assert (tmp_path / "dvc.yaml").read_text() != text
    failed = check(tmp_path)
    assert failed.returncode == 1 and "out of date" in failed.stdout


def dvc_stages(repo: Path, params: dict) -> set[str]:
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, env=env)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=repo, check=True, env=env)
    listed = subprocess.run([str(BIN / "dvc"), "stage", "list", "--name-only"], cwd=repo, env=env,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    return set(listed.stdout.split())


def test_a_student_added_with_its_role_gets_its_stages_paths_and_table1_block(tmp_path, monkeypatch):
    """Only params change: a `tiny` compression student joins the metric-learning grid over two seeds."""
    import json

    from pipeline.config import validate_params
    from pipeline.report import build_report
    from test_report import write_deployed
    from pipeline.stage_spec import eval_dir, pixels_id, teacher_id, transferred_id

    raw = yaml.safe_load((ROOT / "tests/assets/tiny_params.yaml").read_text())
    raw["seeds"] = [0, 1]
    raw["students"]["tiny"] = {"model": {"backbone": "small_resnet", "widths": [2, 4], "embedding_dim": 4},
                               "role": "compression"}
    raw["transfer"]["metric_learning"]["grid"]["student"] = ["tiny"]
    raw["transfer"]["self_taught"]["grid"]["teacher"] = []  # this test writes the other settings' scores only
    params = validate_params(raw)
    added = list(replicas(params.transfer.metric_learning.grid, Setting.METRIC_LEARNING, "proxy_anchor", params.seeds))
    assert [r.stage for r in added if r.student == "tiny"] == [
        "metric_transfer@proxy_anchor-tiny-relaxed-0", "metric_transfer@proxy_anchor-tiny-relaxed-1"]
    listed = dvc_stages(tmp_path, raw)
    assert {r.stage for r in added} <= listed
    from pipeline.stage_spec import EXPORT  # ... and is exported: `metric_transfer_export@proxy_anchor-tiny-relaxed-0`
    assert {r.stage_of(EXPORT[Setting.METRIC_LEARNING].name) for r in added} <= listed

    monkeypatch.chdir(tmp_path)
    scores = {"recall@1": 0.5, "map@r": 0.25, "r_precision": 0.3, "embedding_dim": 4, "parameters": 100}
    grid = params.transfer.self_supervised.grid
    ids = [*(f(t) for t in ("simclr", "proxy_anchor") for f in (pixels_id, teacher_id, transferred_id)),
           *(r.name for r in added), *(r.name for r in replicas(grid, Setting.SELF_SUPERVISED, "simclr", params.seeds))]
    for model in ids:
        eval_dir(model).mkdir(parents=True, exist_ok=True)
        (eval_dir(model) / "metrics.json").write_text(json.dumps(scores))
        if not model.startswith("pixels-") and not model.endswith("-transferred"):
            write_deployed(model, 4)
    for replica in replicas(params.classification.grid, Setting.CLASSIFICATION, "wide", params.seeds):
        replica.folder.mkdir(parents=True)
        (replica.folder / "metrics.json").write_text(json.dumps({"top1": 0.5}))
    for name in ("simclr", "proxy_anchor"):
        (tmp_path / "outputs/teachers" / name).mkdir(parents=True)
        (tmp_path / "outputs/teachers" / name / "metrics.json").write_text(json.dumps({"steps": 2}))
    teacher = tmp_path / "outputs/classification/teachers/wide"
    teacher.mkdir(parents=True)
    (teacher / "metrics.json").write_text(json.dumps({"top1": 0.6}))
    table1 = build_report(params, tmp_path / "reports" / "figures")[0].split("## Table 1:")[1]
    assert [line for line in table1.splitlines() if line.startswith("### ")] == [
        "### Compression: a smaller network, fewer dimensions"]
    assert "tiny student, relaxed (relaxed_contrastive), seed 1" in table1
