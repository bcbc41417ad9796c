"""A new evaluation metric is registered once (`pipeline.metrics.register`) and reaches every evaluation's
metrics.json, the report's tables (results.md), summary.json and the MLflow run, editing no module."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from pipeline import metrics as registry
from pipeline.metrics import Metric

ROOT = Path(__file__).resolve().parents[1]


def centroid_top1(embeddings: torch.Tensor, labels: torch.Tensor) -> float:
    """Nearest-class-mean accuracy on the evaluated images (a metric the project does not have)."""
    classes = labels.unique()
    means = torch.stack([embeddings[labels == c].mean(0) for c in classes])
    return float((classes[torch.cdist(embeddings, means).argmin(1)] == labels).float().mean())


def test_a_registered_metric_reaches_metrics_report_summary_and_mlflow(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipeline import infra
    from pipeline.config import validate_params
    from pipeline.eval.session import evaluate_and_save
    from pipeline.replica import replicas
    from pipeline.report import build_report
    from test_report import write_deployed
    from pipeline.setting import Setting
    from pipeline.stage_spec import eval_dir, pixels_id, teacher_id, transferred_id

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register(Metric("centroid_top1", "Centroid top-1", "pct", "higher", compute=centroid_top1))
    raw = yaml.safe_load((ROOT / "tests/assets/tiny_params.yaml").read_text())
    raw["seeds"] = [0, 1]
    raw["transfer"]["metric_learning"]["grid"]["teacher"] = []
    raw["transfer"]["self_taught"]["grid"]["teacher"] = []
    raw["classification"]["grid"]["method"] = []
    raw["evaluation"].update(tsne_points=0, probe={"enabled": False}, knn={"enabled": False})
    params = validate_params(raw)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")

    # Every model of the grid is scored on raw pixels here (no training): the plumbing under test is the same.
    models = [pixels_id("simclr"), teacher_id("simclr"), transferred_id("simclr"),
              *(r.name for r in replicas(params.transfer.self_supervised.grid, Setting.SELF_SUPERVISED, "simclr",
                                         params.seeds))]
    with infra.start_run("metric-probe", experiment="metric-test", system_metrics=False) as run:
        scores = evaluate_and_save(None, models[0], "simclr", params, run)
        run_id = run.run_id
    assert 0.0 < scores["centroid_top1"] <= 1.0
    for model in models[1:]:
        eval_dir(model).mkdir(parents=True, exist_ok=True)
        (eval_dir(model) / "metrics.json").write_text((eval_dir(models[0]) / "metrics.json").read_text())
        if model != transferred_id("simclr"):
            write_deployed(model, 8)

    (tmp_path / "outputs/teachers/simclr").mkdir(parents=True)
    (tmp_path / "outputs/teachers/simclr/metrics.json").write_text(json.dumps({"steps": 2}))
    written = json.loads((eval_dir(models[0]) / "metrics.json").read_text())
    assert written["centroid_top1"] == scores["centroid_top1"]
    finished = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id)
    assert finished.data.metrics["centroid_top1"] == pytest.approx(scores["centroid_top1"])

    markdown, summary = build_report(params, tmp_path / "reports" / "figures")
    headers = [line for line in markdown.splitlines() if line.startswith("| Model |")]
    assert headers and all("| Centroid top-1 |" in line for line in headers)
    assert f"{100 * scores['centroid_top1']:.2f}" in markdown  # the per-replica tables' format
    assert summary["self_supervised.simclr-small-relaxed.centroid_top1.mean"] == pytest.approx(scores["centroid_top1"])
