"""DVC stage `evaluate_pixels@TEACHER`: the raw-pixels row, scored on the classes TEACHER's students are
evaluated on, by the protocol every model gets (`pipeline.eval.session`). Trained models are scored by
their own training stage, right after it saves them."""
from __future__ import annotations

import argparse

from stages.common import load, run_stage, stage_name


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher", required=True, help="whose evaluation classes to use")
    args = parser.parse_args(argv)
    params = load()
    if args.teacher not in params.teachers:
        raise KeyError(f"teachers.{args.teacher} is not in params.yaml (declared: {', '.join(params.teachers)})")

    from pipeline.config import flatten
    from pipeline.eval.session import evaluate_and_save
    from pipeline.infra import start_run
    from pipeline.outputs import pixels_id

    section = {"seed": params.seed, "data": params.data.model_dump(mode="json"),
               "evaluation": params.evaluation.model_dump(mode="json")}
    tags = {"setting": params.teachers[args.teacher].setting, "teacher": args.teacher, "student": "",
            "method": "pixels", "seed": params.seed}
    with start_run(stage_name(f"evaluate_pixels@{args.teacher}"), experiment=params.mlflow.experiment,
                   params=flatten(section), tags=tags) as run:
        evaluate_and_save(None, pixels_id(args.teacher), args.teacher, params, run)


if __name__ == "__main__":
    run_stage(main)
