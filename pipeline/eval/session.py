"""Score one saved model (or raw pixels) and write its evaluation files: what the training stages run
after saving their model, in the same process and onto the same MLflow run.

Why in the training stage: an evaluation process cost 21-30 s here, about 12 s of it start-up (torch,
MLflow, the optimiser's torch._dynamo import, scikit-learn) that the training process has already paid,
and one run per model then holds its training parameters and its evaluation metrics together, which is
what MLflow's compare views need. The model scored is the file the stage saved, reloaded, so the numbers
describe what a user downloads.

Files, under ``outputs/eval/<model id>/``: ``metrics.json`` (written last, atomically: it exists only
when the evaluation is complete), ``recall.json`` (Recall@K as DVC plot data) and ``figures/``.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import config as cfg
from pipeline.integrity import write_json
from pipeline.metrics import recall_curve
from pipeline.stage_spec import FIGURES, METRICS, RECALL_CURVE, eval_dir

if TYPE_CHECKING:
    from pipeline.infra import RunLogger


def evaluate_and_save(checkpoint: Path | None, model_id: str, teacher: str, params: cfg.Params,
                      logger: RunLogger, transferred: tuple[str, str] | None = None) -> dict[str, float]:
    """Evaluate `checkpoint` (None: raw pixels) on `teacher`'s evaluation classes; log, write, return.

    `transferred` = (model id, `teacher_embedding` kind), for a teacher: also score, on the same images, the
    embedding its students are trained to match, logged with the prefix ``transferred.`` (issue 13: the
    SimCLR teacher is scored on its pooled features but hands on its projection; the Proxy-Anchor teacher
    is scored raw but hands on its normalised embedding, the official repo's cosine protocol).
    """
    from pipeline.data.loading import evaluation_classes, load_images
    from pipeline.eval.protocol import needs_train_split
    from pipeline.fault_hooks import pause_at
    from pipeline.models.loading import load_saved_model

    pause_at("scoring")
    model = None
    if checkpoint is not None:
        if not checkpoint.is_file():
            raise FileNotFoundError(f"{checkpoint} does not exist; run the stage that trains {model_id} first")
        model, _ = load_saved_model(checkpoint)
        # Scored in channels_last: this model is loaded here for scoring only, and oneDNN's channels_last
        # convolutions ran its CPU feature extraction in 0.75x the time of the contiguous layout (GPUs
        # with AMP want it too). The oneDNN bug that keeps some training runs contiguous is in backward
        # only (pipeline/train/loop.py).
        import torch

        model = model.to(memory_format=torch.channels_last)
    classes = evaluation_classes(params, teacher)
    train = load_images(params.data, "train", classes) if needs_train_split(params.evaluation) else None
    test = load_images(params.data, "test", classes)
    metrics, figures = _score(model, model_id, train, test, classes, params)
    pause_at("logging")
    logger.log_metrics(metrics, step=0)
    for figure in figures:
        logger.log_artifact(figure)
    if transferred is not None:
        from pipeline.models.embedding_model import TransferredEmbedding

        transferred_id, kind = transferred
        view, figures = _score(TransferredEmbedding(model, kind), transferred_id, train, test, classes, params)
        logger.log_metrics({f"transferred.{key}": value for key, value in view.items()}, step=0)
        for figure in figures:
            logger.log_artifact(figure, "transferred")
    return metrics


def _score(model, model_id: str, train, test, classes, params: cfg.Params) -> tuple[dict[str, float], list[Path]]:
    """Write the figures, recall.json and (last, atomically) metrics.json of one model under its eval
    folder; its metrics and figure paths."""
    from pipeline.data import class_names
    from pipeline.eval.protocol import evaluate, evaluation_figures

    metrics, test_embeddings = evaluate(model, train, test, params.evaluation, params.data.image_size, params.seed)
    out = eval_dir(model_id)
    figures = evaluation_figures(out / FIGURES, test, test_embeddings, params,
                                 class_names=class_names(params.data.name, classes))
    write_json(out / RECALL_CURVE, [{"k": k, "recall": v} for k, v in recall_curve(metrics)])
    write_json(out / METRICS, metrics)
    return metrics, figures
