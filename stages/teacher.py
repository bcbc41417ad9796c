"""DVC stage `teacher@NAME`: pretrain teacher NAME (SimCLR, MoCo v2 or Proxy-Anchor) from params.yaml, or
load it from its official source checkpoint when `released_teachers.NAME` names one, then score the saved
model (`pipeline.eval.session`) onto the same MLflow run.

`--fingerprint` is DVC stage `released_teacher@NAME`: it checks the released file against the official
layout and records its hash under outputs/data/released/, which every teacher stage depends on, so a
replaced file re-runs them (dvc.yaml says why the dependency takes that road).
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from pipeline.outputs import OUTPUTS, write_json
from stages.common import load, run_stage, stage_name

if TYPE_CHECKING:
    from pipeline.config import Params, TeacherConfig
    from pipeline.infra import RunLogger

RELEASED_FINGERPRINTS = OUTPUTS / "data" / "released"  # dvc.yaml: released_teacher's outs


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", help="a key of the `teachers` section of params.yaml")
    parser.add_argument("--fingerprint", action="store_true",
                        help="check the released checkpoint of NAME, record its hash (released_teacher@NAME)")
    args = parser.parse_args(argv)
    params = load()
    if args.name not in params.teachers:
        raise KeyError(f"teachers.{args.name} is not in params.yaml (declared: {', '.join(params.teachers)})")
    teacher = params.teachers[args.name]
    released = params.released_teachers.get(args.name)
    if args.fingerprint:
        if released is None:
            raise KeyError(f"released_teachers.{args.name} is not in params.yaml: {args.name} is trained")
        fingerprint(args.name, released, teacher)
        return

    if released is None:
        from pipeline.infra import relaunch_under_torchrun

        relaunch_under_torchrun("stages.teacher", argv, teacher.train, f"teachers.{args.name}.train")
    else:
        from pipeline.models.released import load_released

        model, spec = load_released(args.name, released, teacher)  # refused before the run opens

    from pipeline.config import flatten
    from pipeline.infra import is_main_process, start_run
    from pipeline.outputs import LOSS_CURVE, teacher_dir, teacher_id, transferred_id

    stage = stage_name(f"teacher@{args.name}")
    described = teacher.model_dump(mode="json")
    section = {"seed": params.seed, "data": params.data.model_dump(mode="json"),
               "teachers": {args.name: described}}
    if released is not None:  # how it would be trained says nothing about the file it is loaded from
        del described["train"], described["model"]["weights_path"]
        section["released_teachers"] = {args.name: released}
    tags = {"setting": teacher.setting, "teacher": args.name, "student": "", "method": teacher.method,
            "seed": params.seed}
    logged = {**section, "evaluation": params.evaluation.model_dump(mode="json")}
    out = teacher_dir(args.name)
    with start_run(stage, experiment=params.mlflow.experiment, params=flatten(logged), tags=tags) as run:
        if released is None:
            metrics = train(params, args.name, section, run, stage)
        else:
            from pipeline.models.embedding_model import save_model

            save_model(model, spec, out / "model.pt")
            write_json(out / LOSS_CURVE, [])  # nothing was trained here
            metrics = {"steps": 0}
            run.log_metrics(metrics, step=0)
        write_json(out / "metrics.json", metrics)
        if is_main_process():
            from pipeline.eval.session import evaluate_and_save

            evaluate_and_save(out / "model.pt", teacher_id(args.name), args.name, params, run,
                              transferred=(transferred_id(args.name), teacher.transfer_embedding))


def train(params: Params, name: str, section: dict, run: RunLogger, stage: str) -> dict[str, float]:
    """Train teacher `name` into its output folder (resuming its checkpoint); the training summary."""
    from pipeline.data.loading import load_images
    from pipeline.models.embedding_model import save_model
    from pipeline.outputs import teacher_dir
    from pipeline.train.recipes import teacher_objective, teacher_sampler
    from pipeline.train.session import train_and_save

    teacher = params.teachers[name]
    images = load_images(params.data, "train", teacher.train_classes)
    objective, spec = teacher_objective(params, name, images)
    return train_and_save(objective, images, teacher.train, teacher_dir(name), section, run, stage,
                          lambda path: save_model(objective.model, spec, path), seed=params.seed,
                          samples_per_class=teacher_sampler(params, name))


def fingerprint(name: str, path: str, teacher: TeacherConfig) -> None:
    """Refuse a missing or mismatched released file in one line, else write its hash (before any training:
    every teacher stage waits for this one)."""
    from pipeline.models.released import checkpoint_fingerprint, load_released

    load_released(name, path, teacher)
    write_json(RELEASED_FINGERPRINTS / f"{name}.json", {"teacher": name, "checkpoint": path,
                                                       "backbone": teacher.model.backbone,
                                                       "embedding_dim": teacher.model.embedding_dim,
                                                       **checkpoint_fingerprint(path)})


if __name__ == "__main__":
    run_stage(main)
