"""The gallery index a retrieval service would keep for a model's embeddings, with faiss: an exact one, whose
neighbours must be the evaluation's (`pipeline.eval.neighbours`, which stays hand-written for its tie rule and
its self-exclusion by index), and one approximate (HNSW) whose recall against the exact one is measured, never
assumed. Memory is the serialised index's size; query time is measured on one thread, all test images as
queries against all of them, as the evaluation searches.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from pipeline.config import IndexConfig


def _prepared(embeddings: np.ndarray, distance: str) -> np.ndarray:
    """float32 rows, unit length under the cosine distance (inner product on unit rows ranks like it)."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if distance == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def exact_index(embeddings: np.ndarray, distance: str):
    import faiss

    x = _prepared(embeddings, distance)
    index = faiss.IndexFlatIP(x.shape[1]) if distance == "cosine" else faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    return index


def approximate_index(embeddings: np.ndarray, distance: str, config: IndexConfig):
    import faiss

    x = _prepared(embeddings, distance)
    metric = faiss.METRIC_INNER_PRODUCT if distance == "cosine" else faiss.METRIC_L2
    index = faiss.IndexHNSWFlat(x.shape[1], config.hnsw_m, metric)
    index.hnsw.efConstruction = config.ef_construction
    index.hnsw.efSearch = config.ef_search
    index.add(x)
    return index


def neighbours(index, embeddings: np.ndarray, distance: str, k: int) -> np.ndarray:
    """(n, k) gallery indices of each row's k nearest others (itself left out, as the evaluation does)."""
    _, found = index.search(_prepared(embeddings, distance), k + 1)
    rows = np.arange(len(found))[:, None]
    others = [row[row != i][:k] for i, row in zip(rows[:, 0], found)]
    return np.stack(others)


def evaluation_neighbours(embeddings: np.ndarray, distance: str, k: int) -> np.ndarray:
    """The evaluation's k nearest others of each row (`pipeline.eval.neighbours`)."""
    from pipeline.eval.neighbours import iter_nearest_neighbours

    x = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
    blocks = [indices for _, _, indices in iter_nearest_neighbours(x, x, k, distance=distance,
                                                                    self_indices=torch.arange(len(x)))]
    return torch.cat(blocks).numpy()


def index_costs(embeddings: np.ndarray, distance: str, config: IndexConfig) -> dict[str, float]:
    """Per index (`exact`, `hnsw`): bytes in all and per gallery item, ms per query on one thread; the exact
    index's agreement with the evaluation's neighbours (share of queries with the same top k, in order) and
    the approximate index's recall at k (`index_k`) against the exact one."""
    import faiss

    faiss.omp_set_num_threads(1)
    n, k = len(embeddings), min(config.k, len(embeddings) - 1)
    exact = exact_index(embeddings, distance)
    costs: dict[str, float] = {"gallery_items": n, "embedding_bytes": embeddings.shape[1] * 4, "index_k": k}
    truth = None
    for name, build in (("exact", lambda: exact), ("hnsw", lambda: approximate_index(embeddings, distance, config))):
        if name == "hnsw" and not config.approximate:
            continue
        index = build()
        started = time.perf_counter()
        found = neighbours(index, embeddings, distance, k)
        costs[f"{name}_ms_per_query"] = 1000 * (time.perf_counter() - started) / n
        size = len(faiss.serialize_index(index))
        costs[f"{name}_index_bytes"] = size
        costs[f"{name}_bytes_per_item"] = size / n
        if name == "exact":
            truth = found
            costs["exact_agrees_with_evaluation"] = float(
                (found == evaluation_neighbours(embeddings, distance, k)).all(axis=1).mean())
        else:
            costs["hnsw_recall_at_k"] = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth)]))
    return costs
