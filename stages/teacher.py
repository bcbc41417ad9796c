"""DVC stage `teacher@NAME`: pretrain teacher NAME (SimCLR, MoCo v2 or Proxy-Anchor) from params.yaml,
then score the saved model (`pipeline.eval.session`) onto the same MLflow run."""
from __future__ import annotations

import argparse

from pipeline.outputs import write_json
from stages.common import load, quiet_libraries, run_stage, stage_name


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", help="a key of the `teachers` section of params.yaml")
    args = parser.parse_args(argv)
    params = load()
    quiet_libraries()
    if args.name not in params.teachers:
        raise KeyError(f"teachers.{args.name} is not in params.yaml (declared: {', '.join(params.teachers)})")

    from pipeline import launch

    teacher = params.teachers[args.name]
    launch.relaunch_under_torchrun("stages.teacher", argv, teacher.train, f"teachers.{args.name}.train")

    from pipeline import tracking
    from pipeline.config import flatten
    from pipeline.data.loading import load_images
    from pipeline.launch import is_main_process
    from pipeline.models.embedding_model import save_model
    from pipeline.outputs import teacher_dir, teacher_id
    from pipeline.train.recipes import teacher_objective, teacher_sampler
    from pipeline.train.session import train_and_save

    stage = stage_name(f"teacher@{args.name}")
    section = {"seed": params.seed, "data": params.data.model_dump(mode="json"),
               "teachers": {args.name: teacher.model_dump(mode="json")}}
    tags = {"setting": teacher.setting, "teacher": args.name, "student": "", "method": teacher.method,
            "seed": params.seed}
    logged = {**section, "evaluation": params.evaluation.model_dump(mode="json")}
    with tracking.start_run(stage, experiment=params.mlflow.experiment, params=flatten(logged), tags=tags) as run:
        images = load_images(params.data, "train", teacher.train_classes)
        objective, spec = teacher_objective(params, args.name, images)
        out = teacher_dir(args.name)
        metrics = train_and_save(objective, images, teacher.train, out, section, run, stage,
                                 lambda path: save_model(objective.model, spec, path), seed=params.seed,
                                 samples_per_class=teacher_sampler(params, args.name))
        write_json(out / "metrics.json", metrics)
        if is_main_process():
            from pipeline.eval.session import evaluate_and_save

            del objective, images
            evaluate_and_save(out / "model.pt", teacher_id(args.name), args.name, params, run)


if __name__ == "__main__":
    run_stage(main)
