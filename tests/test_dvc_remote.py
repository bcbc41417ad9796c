"""Sharing trained models through a DVC remote: one clone trains and `dvc push`es; a second clone
`dvc pull`s the teachers, and its `dvc repro` trains only the students, to the same metrics.

Slow (`-m slow`, about 2 minutes on 2 cores): the project's whole dvc.yaml, reproduced up to its `transfer`
stages (with `code`, `prepare` and the teacher they need; training stages score their own models) on the tiny
profile, a local-directory remote, two git clones.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from faults_support import BIN, git, make_repo, read_json, run_checked, tiny_params

TARGET = "transfer"  # the SSL students' stage family: `dvc repro transfer` runs it and all it depends on
STUDENT = "simclr-small-relaxed-seed0"  # the model id; its DVC stage is transfer@simclr-small-relaxed-0
STUDENT_STAGE = "transfer@simclr-small-relaxed-0"
TIMING = {"train_seconds", "images_per_second", "ms_per_image"}  # wall-clock speed: the only entries that vary


def team_params() -> dict:
    """The tiny profile with one teacher, one student and one loss."""
    params = tiny_params()
    params["teachers"] = {"simclr": params["teachers"]["simclr"]}
    params["transfer"]["self_supervised"]["grid"] = {"teacher": ["simclr"], "student": ["small"], "loss": ["relaxed"]}
    params["transfer"]["metric_learning"]["grid"] = {"teacher": [], "student": [], "loss": []}
    params["transfer"]["self_taught"]["grid"] = {"teacher": [], "student": [], "loss": []}
    params["losses"] = {"relaxed": params["losses"]["relaxed"]}
    return params


def dvc(root: Path, env: dict, *args: str) -> str:
    return run_checked([str(BIN / "dvc"), *args], root, env, timeout=900).stdout


def ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def without_timing(path: Path) -> dict:
    return {k: v for k, v in read_json(path).items() if k not in TIMING}


def lock_outs(root: Path, stage: str) -> dict[str, str]:
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"][stage]
    return {out["path"]: out["md5"] for out in lock.get("outs", [])}


@pytest.mark.slow
def test_a_second_clone_pulls_the_teacher_and_reproduces_the_students_without_retraining_it(tmp_path):
    first, second, remote = tmp_path / "first", tmp_path / "second", tmp_path / "remote"
    first.mkdir()
    remote.mkdir()
    env = make_repo(first, team_params())
    dvc(first, env, "remote", "add", "-d", "team", str(remote))
    git(first, env, "add", ".dvc/config")
    git(first, env, "commit", "-qm", "team remote")

    trained = ran(dvc(first, env, "repro", TARGET))
    assert {"teacher@simclr", STUDENT_STAGE} <= trained
    git(first, env, "add", "-A")
    git(first, env, "commit", "-qm", "results")
    dvc(first, env, "push")
    assert any(p.is_file() for p in remote.rglob("*")), "dvc push sent nothing to the remote"

    git(tmp_path, env, "clone", "-q", str(first), str(second))
    assert not (second / "outputs/teachers/simclr/model.pt").exists()
    dvc(second, env, "pull", "teacher")  # the trained teachers only: what a teammate needs to skip them
    assert (second / "outputs/teachers/simclr/model.pt").read_bytes() == \
        (first / "outputs/teachers/simclr/model.pt").read_bytes()
    assert not (second / f"outputs/students/{STUDENT}/model.pt").exists()
    status = json.loads(dvc(second, env, "status", "--json") or "{}")
    assert not any(name.startswith("teacher@") for name in status), status

    reproduced = ran(dvc(second, env, "repro", TARGET))
    assert not any(name.startswith("teacher@") for name in reproduced), reproduced
    assert STUDENT_STAGE in reproduced
    for metrics in (f"outputs/students/{STUDENT}/metrics.json", f"outputs/eval/{STUDENT}/metrics.json"):
        assert without_timing(second / metrics) == without_timing(first / metrics), metrics
    # The retrained student is the very same model: dvc.lock records the same hash for it.
    model = f"outputs/students/{STUDENT}/model.pt"
    assert lock_outs(second, STUDENT_STAGE)[model] == lock_outs(first, STUDENT_STAGE)[model]
