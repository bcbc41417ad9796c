"""Classifier distillation (Sec. 4.4 of the paper): stage families `classifier_teacher` (cross-entropy,
under params.yaml's `seed`) and `classifier_student` (one replica: cross-entropy plus one transfer term
from the frozen teacher, or alone, the control). Both are scored by top-1 / top-5 on the test split."""
from __future__ import annotations

from pathlib import Path

from pipeline import infra
from pipeline.config import Params, TrainConfig, flatten
from pipeline.replica import Replica
from pipeline.setting import Setting
from pipeline.stage_spec import (CLASSIFIER_STUDENT, CLASSIFIER_TEACHER, METRICS, MODEL, classifier_teacher_dir,
                                 select)
from pipeline.wiring.common import stage_name

TEACHER_METHOD = "cross_entropy"  # a classifier teacher's `method` tag


def train_teacher(params: Params, name: str, argv: list[str]) -> None:
    section = params.classification
    if name not in section.teachers:
        raise KeyError(f"classification.teachers.{name} is not in params.yaml "
                       f"(declared: {', '.join(section.teachers) or 'none'})")
    train = section.teachers[name].train
    tags = {"setting": "classification", "teacher": name, "student": "", "method": TEACHER_METHOD,
            "seed": params.seed}
    settings = select(params.model_dump(mode="json"), CLASSIFIER_TEACHER.trained_keys(teacher=name))
    _train(params, argv, train, f"classification.teachers.{name}.train", classifier_teacher_dir(name),
           stage_name(f"{CLASSIFIER_TEACHER.name}@{name}"), settings, tags, None, params.seed)


def train_student(params: Params, replica: Replica, argv: list[str]) -> None:
    from pipeline.contracts import check_contracts

    check_contracts(params, losses=(), methods=(replica.method,))
    names = dict(teacher=replica.teacher, student=replica.student, method=replica.method)
    # The replica's seed is an MLflow param and part of the checkpoints' fingerprint.
    settings = {**select(params.model_dump(mode="json"), CLASSIFIER_STUDENT.trained_keys(**names)),
                "student_seed": replica.seed}
    train = params.classification.methods[replica.method].train_in(Setting.CLASSIFICATION, params.classification.train)
    _train(params, argv, train, "classification.train", replica.folder,
           stage_name(replica.stage), settings, replica.tags, replica, replica.seed)


def _train(params: Params, argv: list[str], train_cfg: TrainConfig, train_key: str, out: Path, stage: str,
           settings: dict, tags: dict, replica: Replica | None, seed: int) -> None:
    infra.relaunch_under_torchrun("stages.classify", argv, train_cfg, train_key)

    from pipeline.data.loading import load_images
    from pipeline.integrity import write_json
    from pipeline.models.classifier import load_classifier, save_classifier
    from pipeline.train.classification import score_classifier
    from pipeline.train.classifier_recipes import classifier_student_objective, classifier_teacher_objective
    from pipeline.train.fingerprint import file_sha256
    from pipeline.train.session import train_and_save

    with infra.start_run(stage, experiment=params.mlflow.experiment, params=flatten(settings), tags=tags) as run:
        train = load_images(params.data, "train")
        test = load_images(params.data, "test")
        if replica is None:
            objective, spec = classifier_teacher_objective(params, tags["teacher"], train)
        else:
            teacher_path = classifier_teacher_dir(replica.teacher) / MODEL
            if not teacher_path.is_file():
                raise FileNotFoundError(f"{teacher_path} does not exist; run "
                                        f"{CLASSIFIER_TEACHER.name}@{replica.teacher} first")
            teacher, _ = load_classifier(teacher_path)
            settings = {**settings, "teacher_sha256": file_sha256(teacher_path)}
            objective, spec = classifier_student_objective(params, replica, teacher, train)
        metrics = train_and_save(objective, train, train_cfg, out, settings, run, stage,
                                 lambda path: save_classifier(objective.model, spec, path), seed=seed)
        if not infra.is_main_process():
            return  # every rank holds the same model: rank 0 alone scores it and writes
        scores = score_classifier(objective.model, test, params.data.image_size, params.evaluation.batch_size)
        scores["parameters"] = sum(p.numel() for p in objective.model.parameters())
        run.log_metrics(scores, step=int(metrics["steps"]))
        metrics.update(scores)
    write_json(out / METRICS, metrics)
