"""Where every stage's outputs live and what each model is called: defined once, used by the stages and
the report (dvc.yaml spells the same paths; tests/test_dvc_deps.py holds the two together)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

OUTPUTS = Path("outputs")
REPORTS = Path("reports")
DATA_SUMMARY = OUTPUTS / "data" / "summary.json"
RUNNING_MARKERS = OUTPUTS / ".running"  # one file per stage while it runs under DVC (stages/common.py)
LOSS_CURVE = "loss.json"  # per-step training loss (DVC plot data), beside each trained model.pt


def teacher_id(teacher: str) -> str:
    return f"teacher-{teacher}"


def transferred_id(teacher: str) -> str:
    """The teacher scored on what it hands its students (`teacher_embedding`: the L2-normalised projection
    or embedding), next to `teacher_id`, the model's own output."""
    return f"teacher-{teacher}-transferred"


def pixels_id(teacher: str) -> str:
    """Raw pixels scored on the classes `teacher`'s students are evaluated on."""
    return f"pixels-{teacher}"


def grid_id(teacher: str, student: str, loss: str) -> str:
    """One cell of a grid (teacher, student, loss or classification method), the same over its seeds: the
    report aggregates the replicas of a cell under this name."""
    return f"{teacher}-{student}-{loss}"


def student_id(teacher: str, student: str, loss: str, seed: int) -> str:
    """One trained student: its grid cell and the replica's seed (`simclr-small-relaxed-seed0`)."""
    return f"{grid_id(teacher, student, loss)}-seed{seed}"


def student_stage(stage: str, teacher: str, student: str, loss: str, seed: int) -> str:
    """The DVC name of a student's matrix stage, which joins the item's values with '-'
    (`transfer@simclr-small-relaxed-0`): what `DVC_STAGE` holds, for a stage run by hand."""
    return f"{stage}@{grid_id(teacher, student, loss)}-{seed}"


def teacher_dir(teacher: str) -> Path:
    return OUTPUTS / "teachers" / teacher


def student_dir(teacher: str, student: str, loss: str, seed: int) -> Path:
    return OUTPUTS / "students" / student_id(teacher, student, loss, seed)


def eval_dir(model_id: str) -> Path:
    return OUTPUTS / "eval" / model_id


def classifier_teacher_dir(teacher: str) -> Path:
    return OUTPUTS / "classification" / "teachers" / teacher


def classifier_student_dir(teacher: str, student: str, method: str, seed: int) -> Path:
    return OUTPUTS / "classification" / student_id(teacher, student, method, seed)


def write_json(path: Path, payload: Any) -> None:
    """Atomic write, so a metrics file that exists is always complete; under torchrun rank 0 writes."""
    from pipeline.infra import is_main_process

    if not is_main_process():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
