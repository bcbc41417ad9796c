"""DVC stages `classifier_teacher@TEACHER` and `classifier_student@TEACHER-STUDENT-METHOD-SEED`: classifier
distillation.

The teacher is trained with cross-entropy (under params.yaml's `seed`); each student replica with
cross-entropy plus one transfer term from the frozen teacher (or alone, the control), its `--seed` (one of
`seeds`) setting its initial weights, augmentation stream and batch order. Both are scored by top-1 / top-5
on the test split.
"""
from __future__ import annotations

import argparse

from pipeline.outputs import write_json
from stages.common import load, run_stage, stage_name


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("role", choices=("teacher", "student"))
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--student")
    parser.add_argument("--method")
    parser.add_argument("--seed", type=int, help="a student replica's seed, one of params.yaml's seeds")
    args = parser.parse_args(argv)
    params = load()
    if args.role == "teacher" and args.seed is not None:
        raise ValueError("--seed is for students: a classifier teacher trains under params.yaml's seed")
    if args.role == "student" and args.seed is None:
        raise ValueError("--seed is required for a student (one of params.yaml's seeds)")
    seed = params.seed if args.role == "teacher" else params.replica_seed(args.seed)
    section = params.classification
    if args.teacher not in section.teachers:
        raise KeyError(f"classification.teachers.{args.teacher} is not in params.yaml "
                       f"(declared: {', '.join(section.teachers) or 'none'})")
    if args.role == "student" and (args.student not in section.students or args.method not in section.methods):
        raise KeyError(f"classification.students.{args.student} / classification.methods.{args.method}: "
                       "not both declared in params.yaml")
    if args.role == "student":
        from pipeline.contracts import check_contracts

        check_contracts(params, losses=(), methods=(args.method,))

    from pipeline.infra import is_main_process, relaunch_under_torchrun, start_run

    if args.role == "teacher":
        train_key, train_cfg = f"classification.teachers.{args.teacher}.train", section.teachers[args.teacher].train
    else:
        train_key, train_cfg = "classification.train", section.train
    relaunch_under_torchrun("stages.classify", argv, train_cfg, train_key)

    from pipeline.config import flatten
    from pipeline.data.augment import build_augmentation
    from pipeline.data.loading import load_images
    from pipeline.models.classifier import load_classifier, save_classifier
    from pipeline.outputs import classifier_student_dir, classifier_teacher_dir, student_stage
    from pipeline.train.classification import classification_metrics
    from pipeline.train.fingerprint import file_sha256
    from pipeline.train.classifier_recipes import classifier_student_objective, classifier_teacher_objective
    from pipeline.train.session import train_and_save

    common = {"seed": params.seed, "data": params.data.model_dump(mode="json")}
    teacher_cfg = {"teachers": {args.teacher: section.teachers[args.teacher].model_dump(mode="json")},
                   "augmentation": section.augmentation}
    if args.role == "teacher":
        out = classifier_teacher_dir(args.teacher)
        chosen = teacher_cfg
        stage = stage_name(f"classifier_teacher@{args.teacher}")
    else:
        common["student_seed"] = seed  # the replica's: an MLflow param and part of the checkpoints' fingerprint
        out = classifier_student_dir(args.teacher, args.student, args.method, seed)
        chosen = {**teacher_cfg,
                  "students": {args.student: section.students[args.student].model_dump(mode="json")},
                  "methods": {args.method: section.methods[args.method].model_dump(mode="json")},
                  "train": section.train.model_dump(mode="json")}
        stage = stage_name(student_stage("classifier_student", args.teacher, args.student, args.method, seed))
    settings_section = {**common, "classification": chosen}
    # The tags every run carries (teacher stages: method = the objective), so the UI filters and groups
    # the classifier runs beside the embedding ones: tags.setting = 'classification', tags.method = 'kd'.
    tags = {"setting": "classification", "teacher": args.teacher, "student": args.student or "",
            "method": args.method if args.role == "student" else "cross_entropy", "seed": seed}
    with start_run(stage, experiment=params.mlflow.experiment, params=flatten(settings_section),
                   tags=tags) as run:
        train = load_images(params.data, "train")
        test = load_images(params.data, "test")
        settings = dict(settings_section)
        if args.role == "teacher":
            objective, spec = classifier_teacher_objective(params, args.teacher, train)
        else:
            teacher_path = classifier_teacher_dir(args.teacher) / "model.pt"
            if not teacher_path.is_file():
                raise FileNotFoundError(f"{teacher_path} does not exist; run classifier_teacher@{args.teacher} first")
            teacher, _ = load_classifier(teacher_path)
            settings["teacher_sha256"] = file_sha256(teacher_path)
            # The student's initial weights from the replica's seed (initialised_from_seed reads params.seed).
            replica = params.model_copy(update={"seed": seed})
            objective, spec = classifier_student_objective(replica, args.student, args.method, teacher, train)
        metrics = train_and_save(objective, train, train_cfg, out, settings, run, stage,
                                 lambda path: save_classifier(objective.model, spec, path), seed=seed)
        if not is_main_process():
            return  # every rank holds the same model: rank 0 alone scores it and writes
        preprocess = build_augmentation("none", params.data.image_size, test.channels, test.mean, test.std)
        scores = classification_metrics(objective.model, test.images, test.labels,
                                        batch_size=params.evaluation.batch_size, transform=preprocess)
        scores["parameters"] = sum(p.numel() for p in objective.model.parameters())
        run.log_metrics(scores, step=int(metrics["steps"]))
        metrics.update(scores)
    write_json(out / "metrics.json", metrics)


if __name__ == "__main__":
    run_stage(main)
