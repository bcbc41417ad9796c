"""Retrieval metrics of deep metric learning: Recall@K, MAP@R, R-Precision and NMI (k-means with k = classes).

Every item queries all the others (leave-one-out, as in the CUB/Cars/SOP protocol). One exact, chunked
search for the max(K, R_max) nearest neighbours serves every metric, so Stanford Online Products'
60k x 60k similarity matrix never exists. Conventions:

- Recall@K: 1 if at least one same-class item is among the K nearest other items.
- R-Precision and MAP@R as in Musgrave et al., "A Metric Learning Reality Check" (ECCV 2020): with R the
  number of other items of the query's class, R-Precision = (same-class items in the R nearest) / R and
  MAP@R = (1/R) * sum_{i<=R} P(i) * rel(i), P(i) the precision of the i nearest.
- Queries whose class has no other member cannot score; they are left out of every metric (as
  pytorch-metric-learning does) and counted in ``num_queries_without_positive``.
- Ties between equal scores go to the lower gallery index (see pipeline.eval.neighbours).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.eval.checks import check_distance, check_embeddings_and_labels
from pipeline.eval.kmeans import kmeans
from pipeline.eval.neighbours import iter_score_blocks, top_k

# One greedy k-means++ start, scikit-learn's own default for k-means++; the seed makes it reproducible.
KMEANS_N_INIT = 1


def retrieval_metrics(
    embeddings: Tensor,
    labels: Tensor,
    ks: Sequence[int] = (1, 2, 4, 8),
    distance: str = "euclidean",
    memory_budget_bytes: int = 512 * 2**20,
    nmi: bool = True,
    seed: int = 0,
) -> dict[str, float]:
    """Leave-one-out retrieval metrics on the embeddings' device.

    Returns ``recall@K`` for each K, ``map@r``, ``r_precision``, ``nmi`` (when ``nmi``) and
    ``num_queries_without_positive``. ``memory_budget_bytes`` bounds the working memory of the search
    (the embeddings themselves excluded) and of the k-means behind NMI. NMI clusters with
    pipeline.eval.kmeans (k = number of classes, on L2-normalised rows for cosine, on the embeddings'
    device), which costs O(n * classes * dim) per Lloyd iteration: 18 of the 21 minutes an SOP-sized
    evaluation took on 2 shared CPU cores (benchmarks/results/sop_eval.md); on a GPU it runs there.
    """
    check_embeddings_and_labels(embeddings, labels)
    check_distance(distance)
    num_items = len(embeddings)
    ks = _checked_ks(ks, num_items)
    if memory_budget_bytes <= 0:
        raise ValueError(f"memory_budget_bytes must be positive, got {memory_budget_bytes}")
    classes, class_index, class_sizes = labels.unique(return_inverse=True, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"labels hold a single class ({int(classes[0])}); retrieval needs at least two")
    num_positives = (class_sizes - 1)[class_index].to(embeddings.device)
    if not bool((num_positives > 0).any()):
        raise ValueError("every class has a single member, so no query has a same-class item to retrieve")

    class_index = class_index.to(embeddings.device)
    r_max = int(num_positives.max())
    per_query = _per_query_metrics(
        embeddings, class_index, num_positives, ks, r_max, distance, memory_budget_bytes
    )
    scored = num_positives > 0
    metrics = {name: float(values[scored].mean()) for name, values in per_query.items()}
    if nmi:
        metrics["nmi"] = _nmi(embeddings, class_index, len(classes), distance, seed, memory_budget_bytes)
    metrics["num_queries_without_positive"] = num_items - int(scored.sum())
    return metrics


def _checked_ks(ks: Sequence[int], num_items: int) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks:
        raise ValueError("ks is empty; give at least one K for Recall@K")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"ks must hold positive integers, got {k!r}")
        if k >= num_items:
            raise ValueError(
                f"K={k} in ks is not smaller than the number of items ({num_items}): each query's gallery "
                f"holds only the {num_items - 1} other items"
            )
    return ks


def _per_query_metrics(
    embeddings: Tensor,
    class_index: Tensor,
    num_positives: Tensor,
    ks: tuple[int, ...],
    r_max: int,
    distance: str,
    memory_budget_bytes: int,
) -> dict[str, Tensor]:
    """Each metric per query (float64); kept whole so the final mean does not depend on the chunking.

    Two-stage search, because topk's cost grows with k (SOP: R_max = 11 but Recall@1000): the R_max
    nearest serve MAP@R, R-Precision and every K <= R_max; a query with a same-class item among them
    scores a hit for every larger K too, so only the others need the max(K) nearest. Measured on
    20k x 512 SOP-like data (2 shared, busy cores): all metrics in 5.7-10.6 s, against 11.7-14.2 s for
    the single-stage topk(1000) search alone.
    """
    num_items = len(embeddings)
    device = embeddings.device
    shallow = r_max
    deep = max(ks)
    positions = torch.arange(1, r_max + 1, device=device)
    per_query = {
        name: torch.zeros(num_items, dtype=torch.float64, device=device)
        for name in [*(f"recall@{k}" for k in ks), "map@r", "r_precision"]
    }
    for start, block in iter_score_blocks(
        embeddings,
        embeddings,
        max(shallow, deep),
        distance=distance,
        self_indices=torch.arange(num_items, device=device),
        memory_budget_bytes=memory_budget_bytes,
    ):
        stop = start + len(block)
        query_class = class_index[start:stop, None]
        same_class = class_index[top_k(block, shallow)[1]] == query_class
        r = num_positives[start:stop, None]
        relevant = same_class[:, :r_max] & (positions <= r)
        precision_at_i = relevant.cumsum(dim=1, dtype=torch.float64) / positions
        r_safe = r.clamp(min=1).squeeze(1).double()
        per_query["map@r"][start:stop] = (precision_at_i * relevant).sum(dim=1) / r_safe
        per_query["r_precision"][start:stop] = relevant.sum(dim=1) / r_safe

        found = same_class.any(dim=1)
        for k in ks:
            per_query[f"recall@{k}"][start:stop] = same_class[:, :k].any(dim=1) if k <= shallow else found
        if deep > shallow:
            missed = (~found & (r.squeeze(1) > 0)).nonzero().flatten()
            if len(missed):
                hits = class_index[top_k(block[missed], deep)[1]] == query_class[missed]
                for k in (k for k in ks if k > shallow):
                    per_query[f"recall@{k}"][start + missed] = hits[:, :k].any(dim=1).double()
    return per_query


def _nmi(
    embeddings: Tensor, class_index: Tensor, num_classes: int, distance: str, seed: int, memory_budget_bytes: int
) -> float:
    points = embeddings.float()
    if distance == "cosine":
        points = F.normalize(points, dim=1)
    clusters = kmeans(points, num_classes, n_init=KMEANS_N_INIT, seed=seed, memory_budget_bytes=memory_budget_bytes)
    return normalized_mutual_info(class_index, clusters.labels)


def normalized_mutual_info(labels_true: Tensor, labels_pred: Tensor) -> float:
    """NMI with the arithmetic-mean normaliser, MI / ((H(true) + H(pred)) / 2), natural log, in float64:
    scikit-learn's ``normalized_mutual_info_score`` default, its limit cases included (both labelings a
    single group: 1.0; MI exactly 0: 0.0). Computed here from the sparse contingency table because
    importing ``sklearn.metrics`` costs each evaluation process seconds (see pipeline.eval.kmeans)."""
    if labels_true.shape != labels_pred.shape or labels_true.ndim != 1:
        raise ValueError(
            f"labelings must be 1-D of one length, got {tuple(labels_true.shape)} and {tuple(labels_pred.shape)}"
        )
    true_ids = labels_true.long().unique(return_inverse=True)[1]
    pred_ids = labels_pred.long().to(labels_true.device).unique(return_inverse=True)[1]
    num_true, num_pred = int(true_ids.max()) + 1, int(pred_ids.max()) + 1
    if num_true == num_pred == 1:
        return 1.0
    n = float(len(true_ids))
    cells = (true_ids * num_pred + pred_ids).unique(return_counts=True)
    counts = cells[1].double()
    row_sums = torch.bincount(true_ids, minlength=num_true).double()
    col_sums = torch.bincount(pred_ids, minlength=num_pred).double()
    rows, cols = cells[0] // num_pred, cells[0] % num_pred
    # MI = sum_ij n_ij / N * log(N n_ij / (a_i b_j)) over the non-empty cells, each term written and
    # zeroed below machine epsilon as scikit-learn's mutual_info_score does, clipped at 0.
    share = counts / n
    terms = share * (counts.log() - math.log(n)) + share * (2 * math.log(n) - (row_sums[rows] * col_sums[cols]).log())
    terms = torch.where(terms.abs() < torch.finfo(torch.float64).eps, 0.0, terms)
    mi = max(float(terms.sum()), 0.0)
    if mi == 0.0:
        return 0.0
    normaliser = (_entropy(row_sums, n) + _entropy(col_sums, n)) / 2
    return mi / normaliser


def _entropy(group_sizes: Tensor, n: float) -> float:
    p = group_sizes[group_sizes > 0] / n
    return float(-(p * p.log()).sum())
