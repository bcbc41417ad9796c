"""The raw-pixels row, scored on the classes a teacher's students are evaluated on, by the protocol every
model gets (`pipeline.eval.session`): stage family `evaluate_pixels`. Trained models are scored by their
own training stage, right after it saves them."""
from __future__ import annotations

from pipeline import infra
from pipeline.config import Params, flatten
from pipeline.stage_spec import PIXELS, pixels_id, select
from pipeline.wiring.common import stage_name


def score_pixels(params: Params, teacher: str) -> None:
    config = params.teacher(teacher)
    from pipeline.eval.session import evaluate_and_save

    logged = select(params.model_dump(mode="json"), PIXELS.keys(teacher=teacher))
    tags = {"setting": config.setting.value, "teacher": teacher, "student": "", "method": "pixels",
            "seed": params.seed}
    with infra.start_run(stage_name(f"{PIXELS.name}@{teacher}"), experiment=params.mlflow.experiment,
                            params=flatten(logged), tags=tags) as run:
        evaluate_and_save(None, pixels_id(teacher), teacher, params, run)
