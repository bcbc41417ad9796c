"""DVC stages `transfer@TEACHER-STUDENT-LOSS-SEED` and `metric_transfer@...`: train one replica of a student
from a frozen teacher with one transfer loss, then score the saved student (`pipeline.eval.session`) onto
the same MLflow run.

`--seed` (one of params.yaml's `seeds`) is the replica's: its initial weights, augmentation stream and
batch order. The teacher and the evaluation protocol keep `seed`, so every replica is scored alike."""
from __future__ import annotations

import argparse

from pipeline.outputs import write_json
from stages.common import load, run_stage, stage_name


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--student", required=True)
    parser.add_argument("--loss", required=True)
    parser.add_argument("--seed", type=int, required=True, help="the replica's seed, one of params.yaml's seeds")
    args = parser.parse_args(argv)
    params = load()
    seed = params.replica_seed(args.seed)
    for section, name in (("teachers", args.teacher), ("students", args.student), ("losses", args.loss)):
        if name not in getattr(params, section):
            raise KeyError(f"{section}.{name} is not in params.yaml (declared: {', '.join(getattr(params, section))})")
    from pipeline.contracts import check_contracts

    check_contracts(params, losses=(args.loss,), methods=())
    # The teacher's setting picks the transfer section (no --setting argument): the schema already holds
    # every grid to teachers of its own setting, so an argument could only repeat or contradict it.
    teacher_cfg = params.teachers[args.teacher]
    setting = teacher_cfg.setting
    transfer = params.transfer.of(setting)

    from pipeline.infra import relaunch_under_torchrun

    relaunch_under_torchrun("stages.transfer", argv, transfer.train, f"transfer.{setting}.train")

    from pipeline.config import flatten
    from pipeline.data.loading import load_images
    from pipeline.infra import is_main_process, start_run
    from pipeline.models.embedding_model import save_model
    from pipeline.models.loading import load_teacher
    from pipeline.outputs import student_dir, student_id, student_stage, teacher_dir
    from pipeline.train.fingerprint import file_sha256
    from pipeline.train.recipes import transfer_objective
    from pipeline.train.session import train_and_save

    dvc_stage = "transfer" if setting == "self_supervised" else "metric_transfer"
    stage = stage_name(student_stage(dvc_stage, args.teacher, args.student, args.loss, seed))
    section = {
        "seed": params.seed,
        "student_seed": seed,  # the replica's: an MLflow param and part of the checkpoints' fingerprint
        "data": params.data.model_dump(mode="json"),
        "teachers": {args.teacher: teacher_cfg.model_dump(mode="json")},
        "students": {args.student: params.students[args.student].model_dump(mode="json")},
        "losses": {args.loss: params.losses[args.loss].model_dump(mode="json")},
        "transfer": {setting: transfer.model_dump(mode="json", exclude={"grid"})},
    }
    tags = {"setting": setting, "teacher": args.teacher, "student": args.student,
            "method": args.loss, "seed": seed}
    logged = {**section, "evaluation": params.evaluation.model_dump(mode="json")}
    with start_run(stage, experiment=params.mlflow.experiment, params=flatten(logged), tags=tags) as run:
        teacher_path = teacher_dir(args.teacher) / "model.pt"
        teacher, _ = load_teacher(teacher_path, teacher_cfg)
        images = load_images(params.data, "train", teacher_cfg.train_classes)
        # The student's initial weights come from the replica's seed (recipes.initialised_from_seed reads
        # `params.seed`); the teacher was trained, and the student is scored, under params.yaml's `seed`.
        replica = params.model_copy(update={"seed": seed})
        objective, spec = transfer_objective(replica, args.teacher, args.student, args.loss, teacher, images)
        sampler = getattr(transfer, "sampler", None)  # the self-supervised section has none
        out = student_dir(args.teacher, args.student, args.loss, seed)
        # A retrained teacher invalidates a half-trained student, so the teacher file is part of the fingerprint.
        settings = {**section, "teacher_sha256": file_sha256(teacher_path)}
        metrics = train_and_save(objective, images, transfer.train, out, settings, run, stage,
                                 lambda path: save_model(objective.model, spec, path), seed=seed,
                                 samples_per_class=sampler.samples_per_class if sampler else None)
        write_json(out / "metrics.json", metrics)
        if is_main_process():
            from pipeline.eval.session import evaluate_and_save

            del objective, teacher, images
            evaluate_and_save(out / "model.pt", student_id(args.teacher, args.student, args.loss, seed),
                              args.teacher, params, run)


if __name__ == "__main__":
    run_stage(main)
