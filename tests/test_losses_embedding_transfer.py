"""RKD, PKT and hard DarkRank against hand-worked numbers and brute-force numpy loops written here
from the papers' definitions, and the triplet term against pytorch-metric-learning."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

from pipeline.losses.darkrank import HardDarkRankLoss
from pipeline.losses.pkt import PKTLoss
from pipeline.losses.rkd import RKDLoss
from pipeline.losses.triplet import triplet_margin_loss


def smooth_l1(a, b):
    diff = np.abs(np.asarray(a) - np.asarray(b))
    return float(np.mean(np.where(diff < 1, 0.5 * diff**2, diff - 0.5)))


def rkd_distances(x):
    n = len(x)
    d = np.array([[np.linalg.norm(x[i] - x[j]) for j in range(n)] for i in range(n)])
    return d / d[~np.eye(n, dtype=bool)].mean()


def rkd_angles(x, anchors):
    n = len(x)
    out = np.zeros((len(anchors), n, n))
    for r, i in enumerate(anchors):
        for j in range(n):
            for k in range(n):
                if j != i and k != i:
                    u, v = x[j] - x[i], x[k] - x[i]
                    out[r, j, k] = u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
    return out


def reference_rkd(student, teacher, anchors=None, distance_weight=1.0, angle_weight=2.0):
    student, teacher = np.asarray(student, float), np.asarray(teacher, float)
    anchors = range(len(student)) if anchors is None else anchors
    return distance_weight * smooth_l1(rkd_distances(student), rkd_distances(teacher)) + angle_weight * smooth_l1(
        rkd_angles(student, anchors), rkd_angles(teacher, anchors)
    )


def test_rkd_hand_worked_right_triangle_against_equilateral():
    # Student: right isosceles triangle (0,0), (1,0), (0,1); teacher: equilateral (all angles 60 deg).
    # Distances: student off-diagonal 1, 1, sqrt2 (each twice), mean m = (2 + sqrt2) / 3;
    #   normalised 1/m and sqrt2/m; teacher normalised all 1.  Differences a = 1/m - 1 (4 entries),
    #   b = sqrt2/m - 1 (2 entries), all |.| < 1 -> smooth-L1 = 0.5 x^2; mean over 9 entries.
    # Angles (27 entries, 0 where j or k is the vertex, 1 where j = k on both sides):
    #   vertex 0: cos 90 = 0 vs 0.5 (2 ordered pairs); vertices 1, 2: cos 45 = 1/sqrt2 vs 0.5 (2 each).
    m = (2 + math.sqrt(2)) / 3
    a, b = 1 / m - 1, math.sqrt(2) / m - 1
    distance_term = (4 * 0.5 * a**2 + 2 * 0.5 * b**2) / 9
    angle_term = (2 * 0.5 * 0.5**2 + 4 * 0.5 * (1 / math.sqrt(2) - 0.5) ** 2) / 27
    student = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    teacher = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, math.sqrt(3)]], dtype=torch.float64)
    assert RKDLoss()(student, teacher).item() == pytest.approx(distance_term + 2 * angle_term, rel=1e-10)


def test_rkd_matches_brute_force_and_ignores_similarity_transforms():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(7, 3, generator=generator, dtype=torch.float64)
    teacher = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    loss = RKDLoss()
    assert loss(student, teacher).item() == pytest.approx(reference_rkd(student, teacher), rel=1e-9)
    # A scaled, shifted copy of the teacher (same dimension) has the same relations: loss 0.
    assert loss(3 * teacher + 5, teacher).item() == pytest.approx(0.0, abs=1e-12)


def test_rkd_angle_subsample_uses_exactly_r_anchor_rows():
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(7, 3, generator=generator, dtype=torch.float64)
    teacher = torch.randn(7, 4, generator=generator, dtype=torch.float64)
    torch.manual_seed(0)
    value = RKDLoss(distance_weight=0.0, angle_max_rows=3)(student, teacher).item()
    candidates = [reference_rkd(student, teacher, rows, 0.0) for rows in itertools.combinations(range(7), 3)]
    assert min(abs(value - c) for c in candidates) < 1e-10
    full = RKDLoss(angle_max_rows=7)(student, teacher).item()
    assert full == pytest.approx(reference_rkd(student, teacher), rel=1e-9)


def reference_pkt(student, teacher, eps=1e-7):
    def probabilities(x):
        n = len(x)
        unit = x / (np.linalg.norm(x, axis=1, keepdims=True) + eps)
        sim = np.array([[(unit[i] @ unit[j] + 1) / 2 for j in range(n)] for i in range(n)])
        return sim / sim.sum(axis=1, keepdims=True)

    p_student, p_teacher = probabilities(np.asarray(student, float)), probabilities(np.asarray(teacher, float))
    return float(np.mean(p_teacher * np.log((p_teacher + eps) / (p_student + eps))))


def test_pkt_hand_worked_two_points():
    # Student (1,0), (0,1): cos 0 -> (cos+1)/2 = [[1, .5], [.5, 1]] -> rows [2/3, 1/3].
    # Teacher (1,0), (3,0): cos 1 -> [[1, 1], [1, 1]] -> rows [1/2, 1/2].
    # KL entries p_t log(p_t / p_s): diagonal 0.5 log(0.75), off-diagonal 0.5 log(1.5), twice each;
    # mean over 4 entries = (log 0.75 + log 1.5) / 4 = log(1.125) / 4.
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    teacher = torch.tensor([[1.0, 0.0], [3.0, 0.0]], dtype=torch.float64)
    assert PKTLoss()(student, teacher).item() == pytest.approx(math.log(1.125) / 4, rel=1e-6)


def test_pkt_matches_brute_force():
    generator = torch.Generator().manual_seed(2)
    student = torch.randn(8, 3, generator=generator, dtype=torch.float64)
    teacher = torch.randn(8, 6, generator=generator, dtype=torch.float64)
    assert PKTLoss()(student, teacher).item() == pytest.approx(reference_pkt(student, teacher), rel=1e-10)


def reference_plackett_luce(student, teacher, alpha=3.0, beta=3.0, list_length=4):
    """-mean_i log P(teacher's nearest-first list of i | student scores), by explicit loops."""
    student, teacher = np.asarray(student, float), np.asarray(teacher, float)
    s = student / np.linalg.norm(student, axis=1, keepdims=True)
    t = teacher / np.linalg.norm(teacher, axis=1, keepdims=True)
    n = len(s)
    total = 0.0
    for i in range(n):
        others = [j for j in range(n) if j != i]
        ranked = sorted(others, key=lambda j: np.linalg.norm(t[i] - t[j]))[:list_length]
        scores = [-alpha * np.linalg.norm(s[i] - s[j]) ** beta for j in ranked]
        for k in range(list_length):
            total += scores[k] - math.log(sum(math.exp(v) for v in scores[k:]))
    return -total / n


def reference_triplet(embeddings, labels, margin):
    x, y = np.asarray(embeddings, float), np.asarray(labels)
    hinges = []
    for a, p, q in itertools.product(range(len(x)), repeat=3):
        if a != p and y[a] == y[p] and y[q] != y[a]:
            hinges.append(max(np.linalg.norm(x[a] - x[p]) - np.linalg.norm(x[a] - x[q]) + margin, 0.0))
    positive = [h for h in hinges if h > 0]
    return sum(positive) / max(len(positive), 1)


def test_darkrank_list_likelihood_hand_worked():
    # Two candidates (list_length 2) for readability, alpha = 1, beta = 1, no triplet term.
    # Points on the unit circle at 0, 90, 180 deg: chord lengths |P0P1| = |P1P2| = sqrt2, |P0P2| = 2.
    # Teacher ranks from teacher distances: teacher at 0, 60, 180 deg -> from 0: [1, 2]; from 1: [0, 2]
    # (|60-0| < |180-60|); from 2: [1, 0].  Student scores -chord: row 0 gives (-sqrt2, -2),
    # row 1 (-sqrt2, -sqrt2), row 2 (-sqrt2, -2).  With two items PL log-lik = s1 - log(e^s1 + e^s2):
    #   rows 0, 2: -log(1 + e^(sqrt2 - 2));  row 1: -log 2.
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    angles = torch.tensor([0.0, math.pi / 3, math.pi], dtype=torch.float64)
    teacher = torch.stack([angles.cos(), angles.sin()], dim=1)
    expected = (2 * math.log(1 + math.exp(math.sqrt(2) - 2)) + math.log(2)) / 3
    loss = HardDarkRankLoss(alpha=1.0, beta=1.0, list_length=2, triplet_weight=0.0)(student, teacher)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_darkrank_matches_brute_force_with_triplet_term():
    generator = torch.Generator().manual_seed(3)
    student = torch.randn(10, 4, generator=generator, dtype=torch.float64)
    teacher = torch.randn(10, 6, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2, 3])
    unit = student / student.norm(dim=1, keepdim=True)
    expected = reference_plackett_luce(student, teacher) + reference_triplet(unit, labels, 0.2)
    assert HardDarkRankLoss()(student, teacher, labels).item() == pytest.approx(expected, rel=1e-9)


def test_darkrank_needs_labels_for_its_triplet_term():
    with pytest.raises(ValueError, match="labels"):
        HardDarkRankLoss()(torch.randn(6, 3), torch.randn(6, 3))
    with pytest.raises(ValueError, match="more than list_length=4 rows"):
        HardDarkRankLoss(triplet_weight=0.0)(torch.randn(4, 3), torch.randn(4, 3))


def test_triplet_term_matches_pytorch_metric_learning():
    # The label-relaxation code: TripletMarginMiner(0.2, type "all" in effect) + TripletMarginLoss(0.2).
    generator = torch.Generator().manual_seed(4)
    embeddings = F.normalize(torch.randn(24, 5, generator=generator, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 4, (24,), generator=generator)
    miner = pml_miners.TripletMarginMiner(margin=0.2, type_of_triplets="all")
    oracle = pml_losses.TripletMarginLoss(margin=0.2)(embeddings, labels, miner(embeddings, labels))
    assert triplet_margin_loss(embeddings, labels, 0.2).item() == pytest.approx(oracle.item(), rel=1e-9)
    assert triplet_margin_loss(embeddings, labels, 0.2).item() == pytest.approx(
        reference_triplet(embeddings, labels, 0.2), rel=1e-9
    )
