"""What the MLflow UI shows of a pipeline run: the experiment's kind, and the report on the parent run.

- Experiment kind. MLflow 3.17.2 marks an experiment's kind with the experiment tag
  ``mlflow.experimentKind`` (``custom_model_development`` is "Machine learning", ``genai_development``
  "GenAI apps & agents"): the UI's kind selector writes it (``.venv/.../mlflow/server/js/build/static/js/
  2809.4115baa4.chunk.js`` line 1, col 33155, ``setExperimentTag({key:"mlflow.experimentKind"})``) and
  the Python side sets it only for its demo (``mlflow/demo/generators/traces.py:329``). But the hook
  that reads it (``main.c2f5f8d4.js`` line 24, col 49474, module 31080 ``Fi``) returns the global
  workflow type instead whenever feature flag ``Z0`` is on, and ``Z0`` is hard-wired on (line 2, col
  116991, ``R=()=>!0``). The workflow type is the URL's ``workflowType`` query, else localStorage
  ``mlflow.workflowType`` (line 2, col 111930; default ``genai``), set by the sidebar's GenAI / Model
  training switch; the experiment page then redirects to Runs for machine learning, to the GenAI
  Overview otherwise (``experimentPage.20d52159.chunk.js`` line 1, col 1541). Screenshots of this
  project's experiment, tagged: a fresh browser lands on the GenAI overview; with
  ``?workflowType=machine_learning`` on Runs. So the tag is set (it is MLflow's marker, and builds with
  the flag off honour it), and README's address carries ``?workflowType=machine_learning``.
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


def _client():
    from mlflow import MlflowClient

    from pipeline.infra.store import tracking_uri

    return MlflowClient(tracking_uri())


def publish_report(run_id: str, files: Iterable[tuple[Path, str | None]], metrics: Mapping[str, float],
                   tags: Mapping[str, str]) -> str | None:
    """Declare the experiment of run ``run_id`` a model-training one, and log ``files`` (path, artifact
    folder) as artifacts, ``metrics`` and ``tags`` onto its parent run (the pipeline invocation's).
    Returns the parent's id, or None (and logs nothing on a parent) when the run has none."""
    import time

    from mlflow.entities import Metric, RunTag

    from pipeline.metrics import mlflow_name
    from pipeline.infra.store import with_retries

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
    entries = [Metric(mlflow_name(k), float(v), now, 0) for k, v in metrics.items()]
    for start in range(0, len(entries), 1000):
        with_retries(lambda: client.log_batch(parent, metrics=entries[start : start + 1000]))
    if tags:
        with_retries(lambda: client.log_batch(parent, tags=[RunTag(k, str(v)) for k, v in tags.items()]))
    return parent
