"""Pretrain teacher NAME (SimCLR, MoCo v2 or Proxy-Anchor), or load it from its official source checkpoint
when `released_teachers.NAME` names one, then score the saved model (`pipeline.eval.session`) onto the same
MLflow run: stage family `teacher`. `fingerprint` is stage family `released_teacher`."""
from __future__ import annotations

from pipeline import infra
from pipeline.config import RELAXED, Params, TeacherConfig, flatten
from pipeline.integrity import write_json
from pipeline.stage_spec import (LOSS_CURVE, METRICS, MODEL, RELEASED_RECORDS, TEACHER, select, teacher_dir,
                                 teacher_id, transferred_id)
from pipeline.wiring.common import stage_name


def teacher(params: Params, name: str, argv: list[str]) -> None:
    config = params.teacher(name)
    released = params.released_teachers.get(name)
    if released is None:
        infra.relaunch_under_torchrun("stages.teacher", argv, config.train, f"teachers.{name}.train")
    else:
        from pipeline.models.released import load_released

        model, spec = load_released(name, released, config)  # refused before the run opens


    stage = stage_name(f"{TEACHER.name}@{name}")
    raw = params.model_dump(mode="json")
    section = select(raw, TEACHER.trained_keys(teacher=name))
    if released is not None:  # how it would be trained says nothing about the file it is loaded from
        described = section["teachers"][name]
        del described["train"], described["model"]["weights_path"]
        section["released_teachers"] = {name: released}
    tags = {"setting": config.setting.value, "teacher": name, "student": "", "method": config.method,
            "seed": params.seed}
    logged = {**section, **select(raw, list(TEACHER.scored_with))}
    out = teacher_dir(name)
    with infra.start_run(stage, experiment=params.mlflow.experiment, params=flatten(logged), tags=tags) as run:
        if released is None:
            metrics = train(params, name, section, run, stage)
        else:
            from pipeline.models.embedding_model import save_model

            save_model(model, spec, out / MODEL)
            write_json(out / LOSS_CURVE, [])  # nothing was trained here
            metrics = {"steps": 0}
            run.log_metrics(metrics, step=0)
        if infra.is_main_process():
            gap = label_gap(params, name)
            run.log_metrics(gap, step=int(metrics["steps"]))
            metrics.update(gap)
        write_json(out / METRICS, metrics)
        if infra.is_main_process():
            from pipeline.eval.session import evaluate_and_save

            evaluate_and_save(out / MODEL, teacher_id(name), name, params, run,
                              transferred=(transferred_id(name), config.transfer_embedding))


def train(params: Params, name: str, section: dict, run: infra.RunLogger, stage: str) -> dict[str, float]:
    """Train teacher `name` into its output folder (resuming its checkpoint); the training summary."""
    from pipeline.data.loading import load_images
    from pipeline.train.pretraining import train_teacher

    images = load_images(params.data, "train", params.teachers[name].train_classes)
    return train_teacher(params, name, images, teacher_dir(name), section, run, stage)


def label_gap(params: Params, name: str) -> dict[str, float]:
    """The relaxed loss's label gap on the embedding teacher `name` hands its students (train images;
    `pipeline.eval.label_gap`), at the sigma of the first relaxed-contrastive entry of its setting's grid
    (the loss's default sigma where the grid has none)."""
    from pipeline.data.loading import load_images
    from pipeline.eval.label_gap import teacher_label_gap
    from pipeline.losses import loss_class
    from pipeline.models.loading import load_teacher

    config = params.teachers[name]
    entries = [params.losses[loss] for loss in params.transfer.of(config.setting).grid.loss
               if params.losses[loss].name == RELAXED]
    sigma = loss_class(RELAXED).Params(**(entries[0].in_setting(config.setting).params if entries else {})).sigma
    teacher, _ = load_teacher(teacher_dir(name) / MODEL, config)
    images = load_images(params.data, "train", config.train_classes)
    return teacher_label_gap(teacher, images, config.transfer_embedding, sigma, params.data.image_size, params.seed)


def fingerprint(params: Params, name: str) -> None:
    """Refuse a missing or mismatched released file in one line, else write its hash (before any training:
    every teacher stage waits for this one)."""
    from pipeline.models.released import checkpoint_fingerprint, load_released

    config: TeacherConfig = params.teacher(name)
    path = params.released_teachers.get(name)
    if path is None:
        raise KeyError(f"released_teachers.{name} is not in params.yaml: {name} is trained")
    load_released(name, path, config)
    write_json(RELEASED_RECORDS / f"{name}.json", {"teacher": name, "checkpoint": path,
                                                   "backbone": config.model.backbone,
                                                   "embedding_dim": config.model.embedding_dim,
                                                   **checkpoint_fingerprint(path)})
