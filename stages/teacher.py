"""DVC stage `teacher@NAME`: pretrain teacher NAME (SimCLR, MoCo v2 or Proxy-Anchor) from params.yaml."""
from __future__ import annotations

import argparse

from stages.common import load, quiet_libraries, run_stage, stage_name, write_json


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
    from pipeline.models.embedding_model import save_model
    from pipeline.outputs import teacher_dir
    from pipeline.train.recipes import teacher_objective, teacher_sampler
    from pipeline.train.session import train_and_save

    stage = stage_name(f"teacher@{args.name}")
    section = {"seed": params.seed, "data": params.data.model_dump(mode="json"),
               "teachers": {args.name: teacher.model_dump(mode="json")}}
    with tracking.start_run(stage, experiment=params.mlflow.experiment, params=flatten(section)) as run:
        images = load_images(params.data, "train", teacher.train_classes)
        objective, spec = teacher_objective(params, args.name, images)
        out = teacher_dir(args.name)
        metrics = train_and_save(objective, images, teacher.train, out, section, run, stage,
                                 lambda path: save_model(objective.model, spec, path), seed=params.seed,
                                 samples_per_class=teacher_sampler(params, args.name))
    write_json(out / "metrics.json", metrics)


if __name__ == "__main__":
    run_stage(main)
