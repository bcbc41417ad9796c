"""What the MLflow UI shows of a pipeline run: the experiment's kind, and the report on the parent run.

- Experiment kind. MLflow 3.17's UI reads the experiment tag ``mlflow.experimentKind`` (values
  ``custom_model_development`` "Machine learning", ``genai_development`` "GenAI apps & agents"; the
  bundle's ``mlflow.experimentKind`` lookup in ``server/js/build/static/js/main.*.js``, module 31080, and
  the kind selector's ``setExperimentTag`` mutation in chunk 2809). In 3.17.2 the page an experiment
  opens on follows the global workflow switch instead (``?workflowType=machine_learning`` in the URL, else
  the sidebar's GenAI / Machine-learning toggle kept in the browser's localStorage, default GenAI):
  the tag is honoured by builds where that switch is off. ``EXPERIMENT_URL`` is the address that opens
  on the training runs whatever the browser remembers.
- The report on the parent run: each ``dvc repro`` / ``dvc exp run`` is one parent run (tag
  ``mlflow.parentRunId`` of every stage's run), and the report stage logs ``results.md``, its figures
  and the headline metrics there, where the invocation is looked at as a whole.

MLflow is imported inside the functions: the report stage imports this module, and start-up matters.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

KIND_TAG = "mlflow.experimentKind"
MACHINE_LEARNING = "custom_model_development"  # MLflow's ExperimentKind for classic model training
PARENT_TAG = "mlflow.parentRunId"
EXPERIMENT_URL = "{host}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def _client():
    from mlflow import MlflowClient

    from pipeline.tracking import tracking_uri

    return MlflowClient(tracking_uri())


def publish_report(run_id: str, files: Iterable[tuple[Path, str | None]], metrics: Mapping[str, float],
                   tags: Mapping[str, str]) -> str | None:
    """Declare the experiment of run ``run_id`` a model-training one, and log ``files`` (path, artifact
    folder) as artifacts, ``metrics`` and ``tags`` onto its parent run (the pipeline invocation's).
    Returns the parent's id, or None (and logs nothing on a parent) when the run has none."""
    import time

    from mlflow.entities import Metric, RunTag

    from pipeline.tracking import mlflow_metric_name, with_retries

    client = _client()
    run = with_retries(lambda: client.get_run(run_id))
    experiment_id = run.info.experiment_id
    if with_retries(lambda: client.get_experiment(experiment_id)).tags.get(KIND_TAG) != MACHINE_LEARNING:
        with_retries(lambda: client.set_experiment_tag(experiment_id, KIND_TAG, MACHINE_LEARNING))
    parent = run.data.tags.get(PARENT_TAG)
    if not parent:
        return None
    for path, folder in files:
        client.log_artifact(parent, str(path), folder)
    now = int(time.time() * 1000)
    entries = [Metric(mlflow_metric_name(k), float(v), now, 0) for k, v in metrics.items()]
    for start in range(0, len(entries), 1000):
        with_retries(lambda: client.log_batch(parent, metrics=entries[start : start + 1000]))
    if tags:
        with_retries(lambda: client.log_batch(parent, tags=[RunTag(k, str(v)) for k, v in tags.items()]))
    return parent
