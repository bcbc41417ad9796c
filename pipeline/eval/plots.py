"""Pictures of one embedding: a retrieval grid (Pillow) and a t-SNE map (matplotlib's object API on the
Agg canvas: no pyplot, no global backend switch), so stages and tests can draw them from any thread or
headless machine. Recall@K curves of several models are in ``curves.py``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
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
) -> tuple[Tensor, Tensor, Tensor, list[list[str]]]:
    """One row per random query: the query (blue frame) then its k nearest other items, framed green
    when of the query's class and red otherwise, each captioned with its class (`class_names[label]`,
    else the label). Returns ``(queries, neighbours, correct, captions)`` (captions: one row of k + 1 per
    query) so callers and tests can check what the picture shows.

    Drawn with Pillow, not matplotlib: every training stage draws one grid, and matplotlib's import plus
    its subplot grid cost 2.7 s per stage here against 0.1 s for the same picture pasted tile by tile.
    """
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

    from PIL import Image, ImageDraw, ImageFont  # deferred: only this picture needs Pillow

    font = ImageFont.load_default(size=11)
    tile, frame, gap, caption, header = 72, 3, 10, 16, 44
    canvas = Image.new("RGB", (gap + (k + 1) * (tile + gap), header + n_queries * (tile + caption + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((canvas.width // 2, 4), f"nearest neighbours ({distance}); green = same class, red = other class",
              fill="black", font=font, anchor="ma")
    captions = []
    for row, query in enumerate(queries.tolist()):
        shown = [query, *neighbours[row].tolist()]
        colours = [QUERY, *(CORRECT if hit else WRONG for hit in correct[row].tolist())]
        captions.append([class_label(int(labels[item]), class_names) for item in shown])
        top = header + row * (tile + caption + gap)
        for col, (item, colour, text) in enumerate(zip(shown, colours, captions[-1])):
            left = gap + col * (tile + gap)
            if row == 0:
                draw.text((left + tile // 2, header - 16), "query" if col == 0 else str(col), fill="black",
                          font=font, anchor="ma")
            draw.rectangle((left, top, left + tile - 1, top + tile - 1), fill=colour)
            inner = tile - 2 * frame
            canvas.paste(_picture(images[item]).resize((inner, inner), Image.Resampling.NEAREST),
                         (left + frame, top + frame))
            draw.text((left + tile // 2, top + tile + 2), _fit(draw, text, font, tile + gap - 2), fill=colour,
                      font=font, anchor="ma")
    canvas.save(path)
    return queries, neighbours, correct, captions


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
    import matplotlib  # deferred, like scikit-learn: only this map needs them
    from matplotlib.figure import Figure
    from sklearn.manifold import TSNE

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


def _picture(image: Tensor):
    """One (C, H, W) image as a Pillow image: uint8 as stored, floats (normalised) stretched to [0, 255]."""
    from PIL import Image

    picture = image.detach().cpu()
    if picture.dtype != torch.uint8:
        picture = picture.float()
        picture = (picture - picture.min()) / (picture.max() - picture.min()).clamp(min=1e-12)
        picture = (picture * 255).round().to(torch.uint8)
    array = picture.permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).convert("RGB")


def _fit(draw, text: str, font, width: int) -> str:
    """`text`, cut with an ellipsis until it fits `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"
