"""Exact k-nearest-neighbour search in query chunks sized from a memory budget.

Hand-written (rather than faiss or pytorch-metric-learning's CustomKNN) because it must (a) never hold the
n x n similarity matrix, (b) exclude each query by index so exact duplicates stay in its gallery, and
(c) order ties deterministically. benchmarks/retrieval.py measures it against pml's AccuracyCalculator.

Tie rule: neighbours are ordered by score (higher = nearer), and among exactly equal scores by gallery
index, lowest first -- also across the k-th-neighbour cut. "Equal" means equal as computed in float32:
exact duplicates always tie, items that are only mathematically equidistant tie when the arithmetic is exact.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

# Bytes one query row costs besides its score row: topk values/indices, the sort buffers of the tie
# rule and the per-neighbour metric tensors of the caller (measured; generous on purpose).
_BYTES_PER_NEIGHBOUR = 64
# Per gallery item and query row: the float32 score.
_BYTES_PER_SCORE = 4


def rows_per_chunk(num_gallery: int, k: int, memory_budget_bytes: int) -> int:
    """How many query rows fit the budget: one float32 score row and its k-neighbour buffers each."""
    per_row = num_gallery * _BYTES_PER_SCORE + k * _BYTES_PER_NEIGHBOUR
    return max(1, memory_budget_bytes // per_row)


def prepare_gallery(gallery: Tensor, distance: str) -> tuple[Tensor, Tensor | None]:
    """Float32 gallery (unit rows for cosine) and, for Euclidean, the squared norms used by the score."""
    gallery = gallery.float()
    if distance == "cosine":
        return F.normalize(gallery, dim=1), None
    return gallery, gallery.pow(2).sum(dim=1)


def scores(
    queries: Tensor, gallery: Tensor, squared_norms: Tensor | None, out: Tensor | None = None
) -> Tensor:
    """Similarity block from one matmul; higher = nearer.

    Euclidean uses 2 q.g - |g|^2, which ranks like -|q - g|^2 (the |q|^2 term is constant per row), so
    the distance needs no sqrt and no extra n x n pass.
    """
    if squared_norms is None:
        return torch.mm(F.normalize(queries.float(), dim=1), gallery.T, out=out)
    return torch.addmm(-squared_norms, queries.float(), gallery.T, alpha=2.0, out=out)


def iter_score_blocks(
    queries: Tensor,
    gallery: Tensor,
    k: int,
    *,
    distance: str,
    self_indices: Tensor | None = None,
    memory_budget_bytes: int = 512 * 2**20,
) -> Iterator[tuple[int, Tensor]]:
    """Yield ``(start, block)``: the scores of consecutive query chunks against the whole gallery, with
    rows sized so that a block and its k-neighbour buffers fit the budget. Every block is written into
    one reused buffer (a fresh one per chunk would coexist with the caller's previous block and double
    the peak), so a block is valid only until the next one is requested.

    ``self_indices[i]`` is the gallery index of query i (or None): its score is set to -inf, which
    excludes it by index, so a duplicate of the query at distance 0 is still found.
    """
    prepared, squared_norms = prepare_gallery(gallery, distance)
    chunk = min(rows_per_chunk(len(prepared), k, memory_budget_bytes), len(queries))
    buffer = torch.empty(chunk, len(prepared), device=prepared.device)
    for start in range(0, len(queries), chunk):
        batch = queries[start : start + chunk]
        block = scores(batch, prepared, squared_norms, out=buffer[: len(batch)])
        if self_indices is not None:
            rows = torch.arange(len(block), device=block.device)
            block[rows, self_indices[start : start + chunk]] = -torch.inf
        yield start, block


def iter_nearest_neighbours(
    queries: Tensor,
    gallery: Tensor,
    k: int,
    *,
    distance: str,
    self_indices: Tensor | None = None,
    memory_budget_bytes: int = 512 * 2**20,
) -> Iterator[tuple[int, Tensor, Tensor]]:
    """Yield ``(start, scores, indices)`` for consecutive query chunks, each ``(rows, k)``, nearest first
    (see iter_score_blocks for the arguments)."""
    for start, block in iter_score_blocks(
        queries,
        gallery,
        k,
        distance=distance,
        self_indices=self_indices,
        memory_budget_bytes=memory_budget_bytes,
    ):
        yield start, *top_k(block, k)


def top_k(block: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k highest scores of each row and their indices, nearest first.

    torch.topk, then the tie rule: topk leaves the order of equal scores (and which of them survive
    the k-th cut) unspecified, so only rows that have ties are re-ordered, keeping the common case cheap.
    One extra neighbour tells whether equal scores straddle the cut (the (k+1)-th equals the k-th)."""
    if k == block.shape[1]:
        return block.sort(dim=1, descending=True, stable=True)
    top_scores, top_indices = block.topk(k + 1, dim=1)
    straddles = top_scores[:, k - 1] == top_scores[:, k]
    top_scores, top_indices = top_scores[:, :k], top_indices[:, :k]
    has_ties = (top_scores[:, 1:] == top_scores[:, :-1]).any(dim=1) & ~straddles
    if has_ties.any():
        rows = has_ties.nonzero().flatten()
        by_index = top_indices[rows].sort(dim=1).indices
        indices = top_indices[rows].gather(1, by_index)
        values = top_scores[rows].gather(1, by_index)
        by_score = values.sort(dim=1, descending=True, stable=True).indices
        top_scores[rows] = values.gather(1, by_score)
        top_indices[rows] = indices.gather(1, by_score)
    if straddles.any():
        # Equal scores on both sides of the cut: a stable full-row sort keeps the lowest indices.
        rows = straddles.nonzero().flatten()
        row_scores, row_indices = block[rows].sort(dim=1, descending=True, stable=True)
        top_scores[rows] = row_scores[:, :k]
        top_indices[rows] = row_indices[:, :k]
    return top_scores, top_indices
