"""Self-Taught Metric Learning's pieces (issue 31), each against a reference written here from the paper's and
the official code's formulas (Kim, Kim, Cho, Kwak, CVPR 2022; tjddus9597/STML-CVPR22 code/loss.py), with loops
and sets instead of the vectorised code under test, in float64: W_P, W_C (a brute-force mutual-kNN count), the
relaxed contrastive sum per pair, the KL self-distillation and the whole loss (also by gradcheck); the momentum
teacher and the nearest-neighbour batches on hand cases."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn


def reference_wp(teacher: torch.Tensor, sigma: float) -> list[list[float]]:
    rows = [[float(v) for v in row] for row in teacher]
    unit = [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in rows]
    return [[math.exp(-sum((a - b) ** 2 for a, b in zip(u, v)) / sigma) for v in unit] for u in unit]


def reference_wc(wp: list[list[float]], image: list[int], k: int) -> list[list[float]]:
    """The official loop, re-derived: views of one image set to 1, each row's k largest (the code's topk),
    mutual neighbours R(i), W~_ij = |R(i) & R(j)| / |R(i)| on R(i), mean of W~ over i's round(k/2) nearest,
    symmetric."""
    n = len(wp)
    ranked = [[1.0 if image[i] == image[j] else wp[i][j] for j in range(n)] for i in range(n)]
    order = [sorted(range(n), key=lambda j: -ranked[i][j])[:k] for i in range(n)]
    knn = [set(row) for row in order]
    mutual = [{j for j in knn[i] if i in knn[j]} for i in range(n)]
    tilde = [[len(mutual[i] & mutual[j]) / len(mutual[i]) if j in mutual[i] else 0.0 for j in range(n)]
             for i in range(n)]
    half = [order[i][: int(round(k / 2))] for i in range(n)]
    hat = [[sum(tilde[m][j] for m in half[i]) / len(half[i]) for j in range(n)] for i in range(n)]
    return [[(hat[i][j] + hat[j][i]) / 2 for j in range(n)] for i in range(n)]


def reference_relaxed_per_pair(student: torch.Tensor, w: list[list[float]], delta: float) -> float:
    n = len(student)
    d = [[float((student[i] - student[j]).norm()) for j in range(n)] for i in range(n)]
    mean = [sum(row) / n for row in d]  # the row mean over all n entries, zero diagonal included
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                x = d[i][j] / mean[i]
                total += w[i][j] * x * x + (1 - w[i][j]) * max(delta - x, 0.0) ** 2
    return total / (n * (n - 1))


def reference_kl(f: torch.Tensor, g: torch.Tensor) -> float:
    n = len(f)

    def softmax_of_negated_distances(x):
        d = [[float((x[i] - x[j]).norm()) for j in range(n)] for i in range(n)]
        d = [[v / (sum(row) / n) for v in row] for row in d]
        return [[math.exp(-v) / sum(math.exp(-u) for u in row) for v in row] for row in d]

    p, q = softmax_of_negated_distances(g), softmax_of_negated_distances(f)
    return sum(p[i][j] * (math.log(p[i][j]) - math.log(q[i][j])) for i in range(n) for j in range(n)) / n


def batch(n_images: int = 8, views: int = 2, dim: int = 6, seed: int = 0):
    """Teacher and two student heads for `n_images` images x `views` views (indices repeated per view), with
    the views of an image near each other so the neighbourhoods mean something."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_images, dim, generator=generator, dtype=torch.float64)
    teacher = torch.cat([centres + 0.2 * torch.randn(n_images, dim, generator=generator, dtype=torch.float64)
                         for _ in range(views)])
    f = torch.randn(n_images * views, 4, generator=generator, dtype=torch.float64)
    g = torch.randn(n_images * views, 9, generator=generator, dtype=torch.float64)
    return f, g, teacher, torch.arange(n_images).repeat(views)


def test_pairwise_similarity_is_the_gaussian_of_normalised_teacher_distances():
    from pipeline.losses.stml import pairwise_similarity

    _, _, teacher, _ = batch()
    found = pairwise_similarity(teacher, 0.7)
    assert torch.allclose(found, torch.tensor(reference_wp(teacher, 0.7), dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("k", [2, 4, 5, 10, 16])
def test_contextual_similarity_matches_a_brute_force_mutual_neighbour_count(k):
    from pipeline.losses.stml import contextual_similarity

    _, _, teacher, indices = batch(seed=k)
    wp = reference_wp(teacher, 1.0)
    found = contextual_similarity(torch.tensor(wp, dtype=torch.float64), indices[:, None] == indices[None, :], k)
    expected = torch.tensor(reference_wc(wp, indices.tolist(), k), dtype=torch.float64)
    assert torch.allclose(found, expected, atol=1e-12)
    assert torch.allclose(found, found.T) and found.min() >= 0 and found.max() <= 1


def test_the_two_normalisations_of_the_weighted_sum_are_n_and_n_times_n_minus_one():
    from pipeline.losses.contrastive import PER_PAIR, PER_ROW, weighted_contrastive

    distances = torch.tensor([[0.0, 0.5, 2.0], [0.5, 0.0, 1.0], [2.0, 1.0, 0.0]], dtype=torch.float64)
    weights = torch.tensor([[1.0, 0.8, 0.1], [0.8, 1.0, 0.5], [0.1, 0.5, 1.0]], dtype=torch.float64)
    # By hand, delta 1: (0,1): 0.8 * 0.25 + 0.2 * 0.25 = 0.25; (0,2): 0.1 * 4 = 0.4; (1,2): 0.5 * 1 = 0.5;
    # each pair twice: 2.3.
    assert float(weighted_contrastive(distances, weights, 1.0, per=PER_ROW)) == pytest.approx(2.3 / 3)
    assert float(weighted_contrastive(distances, weights, 1.0, per=PER_PAIR)) == pytest.approx(2.3 / 6)


def test_the_stml_loss_is_the_mean_relaxed_term_of_both_heads_plus_the_kl_term():
    from pipeline.losses.stml import STMLLoss

    f, g, teacher, indices = batch()
    loss = STMLLoss(sigma=1.0, delta=1.0, neighbours=3, views=2)
    total = float(loss(f, g, teacher, indices))
    wp = reference_wp(teacher, 1.0)
    wc = reference_wc(wp, indices.tolist(), 6)
    w = [[(a + b) / 2 for a, b in zip(ra, rb)] for ra, rb in zip(wp, wc)]
    relaxed = (reference_relaxed_per_pair(f, w, 1.0) + reference_relaxed_per_pair(g, w, 1.0)) / 2
    kl = reference_kl(f, g)
    assert loss.parts["relaxed"] == pytest.approx(relaxed, rel=1e-10)
    assert loss.parts["kl"] == pytest.approx(kl, rel=1e-9)
    assert total == pytest.approx(relaxed + kl, rel=1e-10)


def test_the_stml_loss_gradients_pass_gradcheck_and_g_learns_from_its_relaxed_term_only():
    """In f the whole loss is differentiable (gradcheck); in g the KL target is detached by design, so g's
    gradient is exactly that of its half of the relaxed term, and the momentum teacher gets none."""
    from pipeline.losses.stml import STMLLoss

    f, g, teacher, indices = batch(n_images=5)
    loss = STMLLoss(neighbours=2, views=2)
    f.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: loss(a, g, teacher, indices), (f,), eps=1e-6, atol=1e-6)
    weights = loss.targets(teacher, indices)
    g.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda b: loss.relaxed(b, weights), (g,), eps=1e-6, atol=1e-6)
    teacher.requires_grad_(True)
    whole = torch.autograd.grad(loss(f, g, teacher, indices), g)[0]
    half = torch.autograd.grad(loss.relaxed(g, weights) / 2, g)[0]
    assert torch.allclose(whole, half, atol=1e-12)
    loss(f, g, teacher, indices).backward()
    assert teacher.grad is None


def test_the_momentum_teacher_moves_its_whole_state_and_copies_the_batch_counter():
    from pipeline.train.ema import momentum_update

    student, teacher = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    with torch.no_grad():
        student.weight.fill_(3.0)
        teacher.weight.fill_(1.0)
        student.running_mean.fill_(10.0)
        teacher.running_mean.fill_(0.0)
        student.num_batches_tracked.fill_(7)
    momentum_update(student, teacher, 0.9)
    assert torch.allclose(teacher.weight, torch.full((2,), 1.2))  # 0.9 * 1 + 0.1 * 3
    assert torch.allclose(teacher.running_mean, torch.full((2,), 1.0))  # 0.9 * 0 + 0.1 * 10
    assert int(teacher.num_batches_tracked) == 7
    momentum_update(student, teacher, 1.0)
    assert torch.allclose(teacher.weight, torch.full((2,), 1.2))
    momentum_update(student, teacher, 0.0)
    assert torch.equal(teacher.weight, student.weight)
    with pytest.raises(ValueError, match="momentum must be in"):
        momentum_update(student, teacher, 1.5)


def test_nearest_neighbour_batches_hold_each_query_with_its_neighbours():
    from pipeline.data.samplers import NearestNeighbourBatchSampler

    table = torch.tensor([[0, 1, 2], [1, 0, 2], [2, 1, 0], [3, 4, 5], [4, 3, 5], [5, 4, 3], [6, 7, 5], [7, 6, 5]])
    sampler = NearestNeighbourBatchSampler(table, batch_size=6, seed=1)
    first = list(sampler)
    assert len(first) == len(sampler) == 1 and len(first[0]) == 6
    groups = [first[0][:3], first[0][3:]]
    assert all(group in table.tolist() for group in groups) and groups[0][0] != groups[1][0]
    assert list(sampler) == first  # the same epoch replays
    sampler.set_epoch(1)
    assert [list(sampler) for _ in range(2)][0] == list(sampler)
    with pytest.raises(ValueError, match="holds no query with its 3 neighbours"):
        NearestNeighbourBatchSampler(table, batch_size=2)
