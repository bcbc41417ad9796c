"""Pictures of one embedding: a retrieval grid and a t-SNE map (Recall@K curves of several models are in
``curves.py``). Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend
switch), so stages and tests can call them from any thread or headless machine."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from pipeline.eval.checks import check_distance, check_embeddings_and_labels
from pipeline.eval.neighbours import iter_nearest_neighbours

CORRECT, WRONG, QUERY = "#1a9850", "#d73027", "#4575b4"


def retrieval_grid_png(
    path: str | Path,
    images: Tensor,
    embeddings: Tensor,
    labels: Tensor,
    n_queries: int = 8,
    k: int = 5,
    distance: str = "euclidean",
    seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One row per random query: the query (blue frame) then its k nearest other items, framed green
    when of the query's class and red otherwise, each captioned with its class (`class_names[label]`,
    else the label). Returns ``(queries, neighbours, correct)`` so callers can log what the picture shows."""
    check_embeddings_and_labels(embeddings, labels)
    check_distance(distance)
    if images.ndim != 4 or images.shape[1] not in (1, 3) or len(images) != len(embeddings):
        raise ValueError(
            f"images must be (N, 1 or 3, H, W) with N = {len(embeddings)} embeddings, "
            f"got shape {tuple(images.shape)}"
        )
    if not 1 <= k < len(embeddings):
        raise ValueError(f"k must lie in [1, {len(embeddings) - 1}], got {k}")
    n_queries = min(n_queries, len(embeddings))
    generator = torch.Generator().manual_seed(seed)
    queries = torch.randperm(len(embeddings), generator=generator)[:n_queries].sort().values
    at = queries.to(embeddings.device)
    chunks = iter_nearest_neighbours(embeddings[at], embeddings, k, distance=distance, self_indices=at)
    neighbours = torch.cat([indices.cpu() for _, _, indices in chunks])
    correct = labels.cpu()[neighbours] == labels.cpu()[queries, None]

    figure = Figure(figsize=(1.2 * (k + 1), 1.35 * n_queries))
    axes = figure.subplots(n_queries, k + 1, squeeze=False)
    for row, query in enumerate(queries.tolist()):
        _show(axes[row, 0], images[query], QUERY, "query" if row == 0 else None)
        axes[row, 0].set_ylabel(class_label(int(labels[query]), class_names), fontsize=7)
        for col in range(k):
            colour = CORRECT if correct[row, col] else WRONG
            neighbour = int(neighbours[row, col])
            _show(axes[row, col + 1], images[neighbour], colour, f"{col + 1}" if row == 0 else None)
            axes[row, col + 1].set_xlabel(class_label(int(labels[neighbour]), class_names), fontsize=6,
                                          color=colour, labelpad=1)
    figure.suptitle(f"nearest neighbours ({distance}); green = same class, red = other class", fontsize=8)
    figure.savefig(path, dpi=100)
    return queries, neighbours, correct


def embedding_map_png(
    path: str | Path, embeddings: Tensor, labels: Tensor, max_points: int = 2000, seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> Tensor:
    """t-SNE of a random subsample (t-SNE is quadratic in points), coloured by class, with a legend of
    the classes (`class_names[label]`, else the label) up to 20 classes. Returns the indices of the
    plotted items."""
    check_embeddings_and_labels(embeddings, labels)
    if len(embeddings) < 5:
        raise ValueError(f"a t-SNE map needs at least 5 points, got {len(embeddings)}")
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(embeddings), generator=generator)[:max_points].sort().values
    points = embeddings.cpu()[chosen].float().numpy()
    perplexity = min(30.0, (len(points) - 1) / 3)
    from sklearn.manifold import TSNE  # deferred: scikit-learn only for this map

    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)
    present, classes = np.unique(labels.cpu()[chosen].numpy(), return_inverse=True)
    figure = Figure(figsize=(6.5, 5) if len(present) <= 20 else (5, 5))
    axis = figure.subplots()
    if len(present) <= 20:
        palette = matplotlib.colormaps["tab10" if len(present) <= 10 else "tab20"]
        for index, label in enumerate(present.tolist()):
            mine = classes == index
            axis.scatter(xy[mine, 0], xy[mine, 1], color=palette(index), s=4, label=class_label(label, class_names))
        axis.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, markerscale=2.5, frameon=False)
    else:
        axis.scatter(xy[:, 0], xy[:, 1], c=classes, cmap="hsv", s=4)
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_title(f"t-SNE of {len(points)} embeddings, coloured by class", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return chosen


def class_label(label: int, class_names: Sequence[str] | None) -> str:
    """What a figure calls class `label`: its name where the dataset has names, else "class N"."""
    if class_names is not None and 0 <= label < len(class_names):
        return class_names[label]
    return f"class {label}"


def _show(axis, image: Tensor, colour: str, title: str | None) -> None:
    picture = image.detach().cpu()
    if picture.dtype == torch.uint8:
        picture = picture.float() / 255
    else:  # normalised floats: stretch each image to [0, 1] for display
        picture = picture.float()
        picture = (picture - picture.min()) / (picture.max() - picture.min()).clamp(min=1e-12)
    picture = picture.permute(1, 2, 0).numpy()
    axis.imshow(picture[..., 0] if picture.shape[2] == 1 else picture, cmap="gray", vmin=0, vmax=1)
    axis.set_xticks([])
    axis.set_yticks([])
    for spine in axis.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3)
    if title:
        axis.set_title(title, fontsize=7)
