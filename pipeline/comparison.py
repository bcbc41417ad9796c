"""What DVC compares across experiments, written by the report stage from this run's files:

- ``reports/headline.json``: per model, the four numbers a comparison starts from (MAP@R, Recall@1,
  probe and kNN top-1; top-1 for classifiers), under one ``headline`` key so ``dvc exp show`` narrows to
  them with ``--drop '.*' --keep 'Experiment$|headline\\.'`` (README, "Looking at the results").
- ``reports/plots/*.json``: long tables, one row per (model, K) or (model, step), that dvc.yaml's
  top-level ``plots`` overlay one line per model (the ``by_model`` templates in ``.dvc/plots``): Recall@K
  of pixels, teachers and students, and the students' per-step training loss (``loss.json`` beside each
  ``model.pt``, written by the training session). One file per kind rather than a list of per-model
  files in dvc.yaml, so every profile's grids plot without editing dvc.yaml.

Models are those of the grids in params.yaml, in grid order, each student once per seed of ``seeds``
(``simclr-small-relaxed-seed0``); a missing file is an error naming it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import metrics as registry
from pipeline.integrity import write_json
from pipeline.replica import replicas
from pipeline.setting import TRANSFER_SETTINGS, Setting
from pipeline.stage_spec import (LOSS_CURVE, METRICS, classifier_teacher_dir, classifier_teacher_id, eval_dir,
                                 pixels_id, teacher_id, transferred_id)


@dataclass(frozen=True)
class Model:
    """One trained (or raw-pixels) model of this run: `kind` is pixels, teacher, teacher_transferred (the
    embedding the teacher hands its students), student, classifier_teacher
    or classifier_student; `method` the loss (students), the objective (teachers) or "pixels"; `seed` the
    seed it trained under (a student's replica seed, else params.yaml's `seed`)."""

    model_id: str
    setting: str
    teacher: str
    method: str
    kind: str
    seed: int
    folder: Path  # where its metrics.json is (eval folder; the training folder for classifiers)
    train_folder: Path | None = None  # where its loss.json is (students)


def models(params) -> list[Model]:
    """Every model the report covers, in grid order."""
    found: list[Model] = []
    listed: set[str] = set()  # a teacher in two grids (self-supervised and self-taught) is one model
    for setting in TRANSFER_SETTINGS:
        grid = params.transfer.of(setting).grid
        for teacher in grid.teachers_with_models():
            if teacher not in listed:
                listed.add(teacher)
                found.append(Model(pixels_id(teacher), setting, teacher, "pixels", "pixels", params.seed,
                                   eval_dir(pixels_id(teacher))))
                found.append(Model(teacher_id(teacher), setting, teacher, params.teachers[teacher].method, "teacher",
                                   params.seed, eval_dir(teacher_id(teacher))))
                found.append(Model(transferred_id(teacher), setting, teacher, params.teachers[teacher].method,
                                   "teacher_transferred", params.seed, eval_dir(transferred_id(teacher))))
            found += [Model(r.name, setting, teacher, r.method, "student", r.seed, eval_dir(r.name), r.folder)
                      for r in replicas(grid, setting, teacher, params.seeds)]
    grid = params.classification.grid
    setting = Setting.CLASSIFICATION
    for teacher in grid.teachers_with_models():
        found.append(Model(classifier_teacher_id(teacher), setting, teacher, "cross_entropy",
                           "classifier_teacher", params.seed, classifier_teacher_dir(teacher)))
        found += [Model(r.name, setting, teacher, r.method, "classifier_student", r.seed, r.folder, r.folder)
                  for r in replicas(grid, setting, teacher, params.seeds)]
    return found


def _read(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"report: {path} is missing; run its stage first (dvc repro)")
    return json.loads(path.read_text())


def headline(params) -> dict[str, dict[str, dict[str, float]]]:
    """``{"headline": {model id: {metric: value}}}``: the headline metrics (`Metric.headline`) each model has."""
    table: dict[str, dict[str, float]] = {}
    for model in models(params):
        metrics = _read(model.folder / METRICS)
        table[model.model_id] = {key: float(metrics[key]) for key in registry.headline(metrics)}
    return {"headline": table}


def plot_tables(params) -> dict[str, list[dict[str, Any]]]:
    """The top-level DVC plots' data, by file name under ``reports/plots/``: Recall@K of every embedding
    model, and the per-step training loss of the transfer students and of the classifier students."""
    recall: list[dict[str, Any]] = []
    transfer_loss: list[dict[str, Any]] = []
    classifier_loss: list[dict[str, Any]] = []
    for model in models(params):
        label = {"model": model.model_id, "setting": model.setting, "teacher": model.teacher, "method": model.method,
                 "seed": model.seed}
        if not model.kind.startswith("classifier"):
            for k, value in registry.recall_curve(_read(model.folder / METRICS)):
                recall.append({**label, "k": k, "recall": value})
        if model.train_folder is not None:
            rows = transfer_loss if model.kind == "student" else classifier_loss
            rows += [{**label, **point} for point in _read(model.train_folder / LOSS_CURVE)]
    return {"recall_at_k.json": recall, "train_loss.json": transfer_loss, "classifier_loss.json": classifier_loss}


def write_comparison(params, headline_path: Path, plots_dir: Path) -> dict[str, dict[str, dict[str, float]]]:
    """Write the headline file and the plot tables (atomically, like every output); return the headline."""
    table = headline(params)
    for name, rows in plot_tables(params).items():
        write_json(plots_dir / name, rows)
    write_json(headline_path, table)
    return table
