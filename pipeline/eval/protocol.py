"""Evaluate one embedding model (or raw pixels) the same way for every row of the report.

Protocol: features of the test split (restricted to the classes the teacher never saw, in the
metric-learning setting) give Recall@K, MAP@R, R-Precision and NMI; a linear probe and a weighted kNN
are fitted on a seeded subsample of the train split (same classes) and scored on the test split.
Nothing is selected on the test split: the probe's weight decay is chosen on a validation split of train.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from pipeline import config as cfg
from pipeline import metrics as registered_metrics
from pipeline.data import ImageSet
from pipeline.data.augment import build_augmentation
from pipeline.eval.features import extract_features
from pipeline.eval.knn import knn_classify
from pipeline.eval.linear_probe import linear_probe
from pipeline.eval.retrieval import retrieval_metrics


def pixel_features(images: ImageSet, preprocess: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Raw pixels (normalised, flattened): the baseline every learned embedding must beat."""
    return torch.cat([preprocess(images.images[i: i + 4096]).flatten(1) for i in range(0, len(images), 4096)])


def needs_train_split(evaluation: cfg.EvaluationConfig) -> bool:
    """Whether `evaluate` fits anything on the train split (the probe or kNN)."""
    return evaluation.probe.enabled or evaluation.knn.enabled


def evaluate(
    model: torch.nn.Module | None,
    train: ImageSet | None,
    test: ImageSet,
    evaluation: cfg.EvaluationConfig,
    image_size: int,
    seed: int,
) -> tuple[dict[str, float], torch.Tensor]:
    """All metrics of one model as a flat dict, and the test embeddings on the host (for figures).
    `model=None`: raw pixels. `train` may be None when neither the probe nor kNN is enabled
    (`needs_train_split`). A model's features, and with them the neighbour search, MAP@R, k-means NMI, kNN
    and the probe, stay on its device (a GPU where there is one); only the numbers come back. Raw pixels
    stay on the host (SOP's would take 36 GB)."""
    preprocess = build_augmentation("none", image_size, test.channels, test.mean, test.std)
    if train is None and needs_train_split(evaluation):
        raise ValueError("evaluation.probe / evaluation.knn need the train split, and train is None")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.perf_counter()
    if model is None:
        test_x = pixel_features(test, preprocess)
    else:
        test_x, _ = extract_features(model, test.images, batch_size=evaluation.batch_size, device=device,
                                     transform=preprocess, on_device=True)
        if test_x.is_cuda:  # the time of the work, not of its launch
            torch.cuda.synchronize()
    ms_per_image = 1000 * (time.perf_counter() - started) / len(test)
    test_x = test_x.float()
    test_labels = test.labels.to(test_x.device)
    if needs_train_split(evaluation):  # only the probe and kNN fit on train (SOP's pixels: 36 GB of features)
        train = train.subsample(evaluation.probe.train_samples, seed)
        if model is None:
            train_x = pixel_features(train, preprocess)
        else:
            train_x, _ = extract_features(model, train.images, batch_size=evaluation.batch_size, device=device,
                                          transform=preprocess, on_device=True)
        train_x, train_labels = train_x.float().to(test_x.device), train.labels.to(test_x.device)

    metrics: dict[str, float] = {"embedding_dim": int(test_x.shape[1]), "ms_per_image": ms_per_image,
                                 "num_test": len(test), "num_classes": int(test.labels.unique().numel())}
    retrieval = evaluation.retrieval
    metrics.update(retrieval_metrics(test_x, test_labels, ks=retrieval.ks, distance=retrieval.distance,
                                     memory_budget_bytes=retrieval.memory_budget_mb * 2**20, nmi=evaluation.nmi,
                                     seed=seed))
    if evaluation.probe.enabled:
        metrics.update(linear_probe(train_x, train_labels, test_x, test_labels,
                                    val_fraction=evaluation.probe.val_fraction,
                                    weight_decays=evaluation.probe.weight_decays, seed=seed))
    if evaluation.knn.enabled:
        metrics.update(knn_classify(train_x, train_labels, test_x, test_labels, k=evaluation.knn.k,
                                    temperature=evaluation.knn.temperature))
    for extra in registered_metrics.computed():  # metrics registered with their own computation
        metrics[extra.key] = float(extra.compute(test_x, test_labels))
    if model is not None:
        from pipeline.models.loading import count_parameters

        metrics["parameters"] = count_parameters(model)
    else:
        metrics["parameters"] = 0
    return metrics, test_x.cpu()


def retrieval_score(model: torch.nn.Module, images: ImageSet, evaluation: cfg.EvaluationConfig, image_size: int,
                    key: str = registered_metrics.MAP_AT_R) -> float:
    """One retrieval metric of `model` on `images` (leave-one-out, as `evaluate` scores the test split): what
    the search reads on the validation split while a trial trains."""
    preprocess = build_augmentation("none", image_size, images.channels, images.mean, images.std)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    features, _ = extract_features(model, images.images, batch_size=evaluation.batch_size, device=device,
                                   transform=preprocess, on_device=True)
    retrieval = evaluation.retrieval
    return retrieval_metrics(features.float(), images.labels.to(features.device), ks=(1,),
                             distance=retrieval.distance, memory_budget_bytes=retrieval.memory_budget_mb * 2**20,
                             nmi=False)[key]


def evaluation_figures(out_dir: Path, test: ImageSet, embeddings: torch.Tensor, params: cfg.Params,
                       class_names: Sequence[str] | None = None) -> list[Path]:
    """The retrieval grid and (unless `tsne_points` is 0) the t-SNE map of one model's test embeddings,
    classes named by `class_names` (indexed by `test`'s labels) where given."""
    from pipeline.eval.plots import embedding_map_png, retrieval_grid_png

    out_dir.mkdir(parents=True, exist_ok=True)
    grid = out_dir / "retrieval_grid.png"
    retrieval_grid_png(grid, test.images, embeddings, test.labels, n_queries=8, k=5,
                       distance=params.evaluation.retrieval.distance, class_names=class_names)
    figures = [grid]
    if params.evaluation.tsne_points:
        tsne = out_dir / "tsne.png"
        embedding_map_png(tsne, embeddings, test.labels, max_points=params.evaluation.tsne_points, seed=params.seed,
                          class_names=class_names)
        figures.append(tsne)
    return figures
