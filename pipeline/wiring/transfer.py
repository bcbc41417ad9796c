"""Train one replica of a student from a frozen teacher with one transfer loss, then score the saved student
(`pipeline.eval.session`) onto the same MLflow run: stage families `transfer` and `metric_transfer`."""
from __future__ import annotations

from pipeline import infra
from pipeline.config import Params, flatten
from pipeline.replica import Replica
from pipeline.stage_spec import MODEL, METRICS, STUDENTS, select, teacher_dir
from pipeline.wiring.common import stage_name


def train_student(params: Params, replica: Replica, argv: list[str]) -> None:
    for section, name in (("teachers", replica.teacher), ("students", replica.student), ("losses", replica.method)):
        if name not in getattr(params, section):
            raise KeyError(f"{section}.{name} is not in params.yaml (declared: {', '.join(getattr(params, section))})")
    from pipeline.contracts import check_contracts

    check_contracts(params, losses=(replica.method,), methods=())
    teacher_cfg = params.teachers[replica.teacher]
    transfer = params.transfer.of(replica.setting)
    train = params.losses[replica.method].train_in(replica.setting, transfer.train)

    infra.relaunch_under_torchrun("stages.transfer", argv, train, f"transfer.{replica.setting}.train")

    from pipeline.data.loading import load_images
    from pipeline.integrity import write_json
    from pipeline.models.embedding_model import load_initial_backbone, save_model
    from pipeline.models.loading import load_teacher
    from pipeline.train.fingerprint import file_sha256
    from pipeline.train.recipes import transfer_objective
    from pipeline.train.session import train_and_save

    stage = stage_name(replica.stage)
    family = STUDENTS[replica.setting]
    names = dict(teacher=replica.teacher, student=replica.student, method=replica.method, setting=replica.setting)
    raw = params.model_dump(mode="json")
    # The replica's seed is an MLflow param and part of the checkpoints' fingerprint.
    section = {**select(raw, family.trained_keys(**names)), "student_seed": replica.seed}
    logged = {**section, **select(raw, family.keys(**names))}
    with infra.start_run(stage, experiment=params.mlflow.experiment, params=flatten(logged),
                            tags=replica.tags) as run:
        teacher_path = teacher_dir(replica.teacher) / MODEL
        teacher, _ = load_teacher(teacher_path, teacher_cfg)
        images = replica.setting.trained_on(load_images(params.data, "train", teacher_cfg.train_classes))
        objective, spec = transfer_objective(params, replica, teacher, images, load_initial_backbone(teacher_path))
        sampler = getattr(transfer, "sampler", None)  # the self-supervised section has none
        out = replica.folder
        # A retrained teacher invalidates a half-trained student, so the teacher file is part of the fingerprint.
        settings = {**section, "teacher_sha256": file_sha256(teacher_path)}
        metrics = train_and_save(objective, images, train, out, settings, run, stage,
                                 lambda path: save_model(objective.model, spec, path), seed=replica.seed,
                                 samples_per_class=sampler.samples_per_class if sampler else None)
        write_json(out / METRICS, metrics)
        if infra.is_main_process():
            from pipeline.eval.session import evaluate_and_save

            del objective, teacher, images
            evaluate_and_save(out / MODEL, replica.name, replica.teacher, params, run)
