"""K-means in torch, on the points' device: greedy k-means++ seeding, Lloyd iterations, best of n_init.

Written by hand because NMI clusters every test set with k = number of classes, and scikit-learn's KMeans
does not scale to Stanford Online Products (60,502 x 512, k = 11,316). Measured by benchmarks/sop_eval.py
(benchmarks/results/sop_eval.md; 2 CPU cores shared with other jobs, load 4-9): on the same SOP-like
5,000 x 512 data with k = 935 and one greedy k-means++ start each, scikit-learn 1.9.1 took 122.1 s and
this 8.1 s (15x; inertia 1.0003x scikit-learn's, NMI +0.0007); importing sklearn.cluster + sklearn.metrics
cost every evaluation process a further 4.6-5.2 s in that run (it grows with the load), while this needs
only torch. At full SOP size this took 17.9 min of a 20.9 min evaluation on that CPU; on a GPU it runs on
the embeddings' device (not yet measured: no GPU was lent to the task that wrote it).

The algorithm follows scikit-learn's ``KMeans(init="k-means++", algorithm="lloyd")``, so NMI numbers stay
comparable with the scikit-learn version this replaces:

- Seeding: *greedy* k-means++ (Arthur & Vassilvitskii 2007, section 6; scikit-learn's ``_kmeans_plusplus``):
  the first centre uniformly at random, then per centre ``2 + int(log(k))`` candidates sampled with
  probability proportional to the squared distance to the nearest chosen centre, keeping the candidate
  that lowers the potential (sum of those squared distances) most. ``local_trials=1`` is plain k-means++.
- Lloyd: assign every point to its nearest centre, move each centre to the mean of its points. It stops
  when no label changes, or when the squared centre shift summed over centres is at most
  ``tol * mean per-feature variance`` (scikit-learn's relative tolerance), or after ``max_iter``
  iterations; then one more assignment, so labels match the returned centres. A cluster left empty is
  re-seeded with the point farthest from its centre (as scikit-learn does).
- ``n_init`` seedings, each followed by Lloyd; the run with the lowest inertia (sum of squared distances
  to the assigned centre, float64) wins, the earlier on ties.

Distances use |x|^2 - 2 x.c + |c|^2 on mean-centred float32 points (as scikit-learn centres the data),
chunked over points so that one (rows x k) float32 block fits ``memory_budget_bytes``: 60,502 x 11,316
never exists at once. The expansion's rounding error is about 1e-7 x |x|^2 (float32), so clusters whose
squared radius is below that, relative to their distance from the data mean, are not resolved: pass
float64 points for such data (scikit-learn's float32 Lloyd uses the same expansion). On CPU the result
depends only on the seed (torch's CPU ``index_add_``, ``min`` and ``searchsorted`` are deterministic; the
tests check it). On CUDA the centre sums use atomic adds, so
the last bits, and rarely a label, can differ between runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class KMeansResult:
    labels: Tensor  # (n,) int64, the nearest centre of each point
    centres: Tensor  # (k, d) in the points' coordinates and dtype (float32 unless float64 was given)
    inertia: float  # sum of squared distances of the points to their centres
    iterations: int  # Lloyd iterations of the winning run
    converged: bool  # the winning run stopped by the tolerance (or unchanged labels), not by max_iter


def kmeans(
    points: Tensor,
    num_clusters: int,
    *,
    n_init: int = 1,
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
    local_trials: int | None = None,
    memory_budget_bytes: int = 256 * 2**20,
) -> KMeansResult:
    """Cluster the rows of ``points`` (n, d) into ``num_clusters`` on their device (see the module doc).

    ``local_trials``: candidates per greedy k-means++ step, default ``2 + int(log(k))`` (scikit-learn's).
    ``memory_budget_bytes`` bounds the distance blocks (the points themselves excluded).
    """
    if points.ndim != 2 or len(points) == 0:
        raise ValueError(f"points must be a non-empty 2-D (n, d) tensor, got shape {tuple(points.shape)}")
    if not points.is_floating_point():
        raise ValueError(f"points must be floating point, got {points.dtype}")
    if not 1 <= num_clusters <= len(points):
        raise ValueError(f"num_clusters must be in [1, {len(points)}] (the number of points), got {num_clusters}")
    for name, value in (("n_init", n_init), ("max_iter", max_iter), ("memory_budget_bytes", memory_budget_bytes)):
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    if local_trials is not None and local_trials < 1:
        raise ValueError(f"local_trials must be positive, got {local_trials}")
    if tol < 0:
        raise ValueError(f"tol must be non-negative, got {tol}")

    dtype = torch.float64 if points.dtype == torch.float64 else torch.float32
    x = points.to(dtype)
    mean = x.mean(dim=0)
    x = x - mean  # scikit-learn centres the data too: smaller norms, less cancellation in |x|^2 - 2x.c
    x_sq = x.pow(2).sum(dim=1)
    threshold = float(x.var(dim=0, unbiased=False).mean()) * tol
    trials = local_trials if local_trials is not None else 2 + int(math.log(num_clusters))
    generator = torch.Generator(device=x.device).manual_seed(seed)

    best: KMeansResult | None = None
    for _ in range(n_init):
        with _one_thread_on_cpu(x.device):
            centres = _greedy_kmeans_plus_plus(x, x_sq, num_clusters, trials, generator)
        run = _lloyd(x, x_sq, centres, max_iter, threshold, memory_budget_bytes)
        if best is None or run.inertia < best.inertia:
            best = run
    assert best is not None
    return KMeansResult(best.labels, best.centres + mean, best.inertia, best.iterations, best.converged)


@contextmanager
def _one_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """Seeding is k sequential steps of a few small ops each; on this project's 2 shared cores, 2 intra-op
    threads made them 10x slower than 1 (measured: 93 vs 7 ms per greedy step at n = 5,000, k = 696,
    load average 6): each op waited for a descheduled thread. Lloyd's large matmuls keep the caller's
    threads."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _greedy_kmeans_plus_plus(
    x: Tensor, x_sq: Tensor, num_clusters: int, trials: int, generator: torch.Generator
) -> Tensor:
    """Greedy k-means++ seeds (scikit-learn's ``_kmeans_plusplus``), without a host sync per centre."""
    n, device = len(x), x.device
    centres = torch.empty(num_clusters, x.shape[1], dtype=x.dtype, device=device)
    first = torch.randint(n, (1,), generator=generator, device=device)
    centres[0] = x.index_select(0, first)[0]
    closest = _squared_distances(x[first], x, x_sq).squeeze(0)  # (n,) to the nearest chosen centre
    for c in range(1, num_clusters):
        cumulative = closest.double().cumsum(dim=0)
        targets = torch.rand(trials, generator=generator, device=device, dtype=torch.float64) * cumulative[-1]
        candidates = torch.searchsorted(cumulative, targets).clamp_(max=n - 1)
        closest_if = torch.minimum(_squared_distances(x[candidates], x, x_sq), closest)  # (trials, n)
        best = closest_if.sum(dim=1, dtype=torch.float64).argmin()
        closest = closest_if[best]
        centres[c] = x.index_select(0, candidates[best].view(1))[0]  # no host sync
    return centres


def _squared_distances(queries: Tensor, x: Tensor, x_sq: Tensor) -> Tensor:
    """(q, n) squared Euclidean distances from a few query rows to every point, clamped at 0."""
    q_sq = queries.pow(2).sum(dim=1, keepdim=True)
    return torch.addmm(x_sq + q_sq, queries, x.T, alpha=-2.0).clamp_(min=0)


@dataclass
class _Assignment:
    labels: Tensor
    distances: Tensor  # squared distance of each point to its centre (from the expansion; for relocation)


def _assign(x: Tensor, x_sq: Tensor, centres: Tensor, buffer: Tensor) -> _Assignment:
    """Nearest centre of every point, in row chunks that reuse ``buffer`` (rows x k)."""
    n = len(x)
    labels = torch.empty(n, dtype=torch.long, device=x.device)
    distances = torch.empty(n, dtype=x.dtype, device=x.device)
    c_sq = centres.pow(2).sum(dim=1)
    rows = len(buffer)
    for start in range(0, n, rows):
        chunk = x[start : start + rows]
        block = torch.addmm(c_sq, chunk, centres.T, alpha=-2.0, out=buffer[: len(chunk)])
        values, indices = block.min(dim=1)  # ties: the lowest centre index
        labels[start : start + len(chunk)] = indices
        distances[start : start + len(chunk)] = values + x_sq[start : start + len(chunk)]
    return _Assignment(labels, distances.clamp_(min=0))


def _lloyd(
    x: Tensor, x_sq: Tensor, centres: Tensor, max_iter: int, threshold: float, memory_budget_bytes: int
) -> KMeansResult:
    """scikit-learn's ``_kmeans_single_lloyd``: unchanged labels stop it strictly (the centres are
    already the means of the final labels); a small centre shift or max_iter stops it, then one more
    assignment gives the labels of the returned centres."""
    k, size = len(centres), x.element_size()
    buffer = torch.empty(max(1, min(len(x), memory_budget_bytes // (k * size))), k, dtype=x.dtype, device=x.device)
    previous: Tensor | None = None
    strict = converged = False
    iterations = 0
    for iterations in range(1, max_iter + 1):
        assignment = _assign(x, x_sq, centres, buffer)
        new_centres, relocated = _update_centres(x, assignment, centres)
        shift = float((new_centres - centres).pow(2).sum())
        centres = new_centres
        if not relocated and previous is not None and torch.equal(assignment.labels, previous):
            strict = converged = True
            break
        if shift <= threshold:
            converged = True
            break
        previous = assignment.labels
    labels = assignment.labels if strict else _assign(x, x_sq, centres, buffer).labels
    inertia_rows = max(1, memory_budget_bytes // (x.shape[1] * size))
    return KMeansResult(labels, centres, _inertia(x, centres, labels, inertia_rows), iterations, converged)


def _update_centres(x: Tensor, assignment: _Assignment, centres: Tensor) -> tuple[Tensor, bool]:
    """Means of the clusters, and whether one was empty. An empty cluster takes the point farthest from
    its centre, which leaves its old cluster (scikit-learn's relocation); a cluster left with no point
    keeps its centre."""
    k = len(centres)
    labels = assignment.labels
    sums = torch.zeros_like(centres).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=k).to(x.dtype)
    empty = (counts == 0).nonzero().flatten()
    if len(empty):
        far = assignment.distances.topk(len(empty)).indices
        sums.index_add_(0, labels[far], -x[far])
        counts.index_add_(0, labels[far], -torch.ones(len(far), dtype=x.dtype, device=x.device))
        sums[empty] = x[far]
        counts[empty] = 1
    filled = counts > 0
    return torch.where(filled[:, None], sums / counts.clamp(min=1)[:, None], centres), bool(len(empty))


def _inertia(x: Tensor, centres: Tensor, labels: Tensor, rows: int) -> float:
    """Sum of squared distances to the assigned centres, computed directly (not from the expansion)."""
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, len(x), rows):
        diff = x[start : start + rows] - centres[labels[start : start + rows]]
        total += diff.pow(2).sum(dtype=torch.float64)
    return float(total)
