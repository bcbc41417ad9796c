"""DVC stages `evaluate_*`: probe, kNN and retrieval metrics of a teacher, a student, or raw pixels."""
from __future__ import annotations

import argparse

from stages.common import load, quiet_libraries, run_stage, stage_name, write_json


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=("teacher", "student", "pixels"))
    parser.add_argument("--teacher", required=True, help="the teacher (for pixels: whose evaluation classes to use)")
    parser.add_argument("--student")
    parser.add_argument("--loss")
    args = parser.parse_args(argv)
    params = load()
    quiet_libraries()
    if args.teacher not in params.teachers:
        raise KeyError(f"teachers.{args.teacher} is not in params.yaml (declared: {', '.join(params.teachers)})")
    if args.kind == "student" and (args.student not in params.students or args.loss not in params.losses):
        raise KeyError(f"students.{args.student} / losses.{args.loss}: not both declared in params.yaml")

    from pipeline import tracking
    from pipeline.config import flatten
    from pipeline.data.loading import evaluation_classes, load_images
    from pipeline.eval.protocol import evaluate, evaluation_figures
    from pipeline.models.loading import load_saved_model
    from pipeline.outputs import eval_dir, pixels_id, student_dir, student_id, teacher_dir, teacher_id

    if args.kind == "teacher":
        model_id, checkpoint = teacher_id(args.teacher), teacher_dir(args.teacher) / "model.pt"
    elif args.kind == "student":
        model_id = student_id(args.teacher, args.student, args.loss)
        checkpoint = student_dir(args.teacher, args.student, args.loss) / "model.pt"
    else:
        model_id, checkpoint = pixels_id(args.teacher), None
    section = {"seed": params.seed, "data": params.data.model_dump(mode="json"),
               "evaluation": params.evaluation.model_dump(mode="json")}
    out = eval_dir(model_id)
    with tracking.start_run(stage_name(f"evaluate@{model_id}"), experiment=params.mlflow.experiment,
                            params=flatten(section)) as run:
        model = None
        if checkpoint is not None:
            if not checkpoint.is_file():
                raise FileNotFoundError(f"{checkpoint} does not exist; run the stage that trains {model_id} first")
            model, _ = load_saved_model(checkpoint)
        classes = evaluation_classes(params, args.teacher)
        train = load_images(params.data, "train", classes)
        test = load_images(params.data, "test", classes)
        metrics, test_embeddings = evaluate(model, train, test, params.evaluation, params.data.image_size, params.seed)
        figures = evaluation_figures(out / "figures", test, test_embeddings, params)
        run.log_metrics(metrics, step=0)
        for figure in figures:
            run.log_artifact(figure)
    write_json(out / "recall.json", [{"k": int(k.split("@")[1]), "recall": v}
                                     for k, v in metrics.items() if k.startswith("recall@")])
    write_json(out / "metrics.json", metrics)


if __name__ == "__main__":
    run_stage(main)
