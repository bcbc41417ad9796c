"""Relaxed contrastive and label-based contrastive losses against hand-worked numbers and an
independent brute-force numpy loop."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.losses.contrastive import ContrastiveLoss
from pipeline.losses.relaxed_contrastive import RelaxedContrastiveLoss


def reference_relaxed(student, teacher, sigma=1.0, delta=1.0, normalize="row"):
    """Plain loops over pairs, written from the paper's formula (not from the code under test)."""
    student, teacher = np.asarray(student, float), np.asarray(teacher, float)
    n = len(student)
    unit = teacher / np.linalg.norm(teacher, axis=1, keepdims=True)
    dist = np.array([[np.linalg.norm(student[i] - student[j]) for j in range(n)] for i in range(n)])
    if normalize == "row":
        dist = dist / dist.mean(axis=1, keepdims=True)
    elif normalize == "global":
        dist = dist / dist.mean()
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                w = math.exp(-np.sum((unit[i] - unit[j]) ** 2) / sigma)
                total += w * dist[i, j] ** 2 + (1 - w) * max(delta - dist[i, j], 0.0) ** 2
    return total / n


# Three students on a line: x = 0, 1, 3.  Raw distances D01 = 1, D02 = 3, D12 = 2.
STUDENT = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]], dtype=torch.float64)
# Teachers (normalised inside the loss): t0 -> (1, 0), t1 -> (0, 1), t2 -> (0, 1).
# ||t0 - t1||^2 = ||t0 - t2||^2 = 2 -> w = e^-2 =: a (sigma = 1);  t1 = t2 -> w12 = 1.
TEACHER = torch.tensor([[2.0, 0.0], [0.0, 5.0], [0.0, 0.5]], dtype=torch.float64)
A = math.exp(-2.0)


def test_hand_worked_row_normalisation():
    # Row means over all 3 entries (zero diagonal included): row0 4/3, row1 3/3 = 1, row2 5/3.
    # d01 = 3/4, d02 = 9/4 | d10 = 1, d12 = 2 | d20 = 9/5, d21 = 6/5.
    # Terms w d^2 + (1 - w) relu(1 - d)^2:
    #   (0,1): a 9/16 + (1 - a)(1/4)^2 = 0.5625 a + 0.0625 (1 - a)
    #   (0,2): a 81/16 = 5.0625 a          (push term 0: d > 1)
    #   (1,0): a * 1 + (1 - a) * 0 = a
    #   (1,2): w = 1: 2^2 = 4
    #   (2,0): a 81/25 = 3.24 a
    #   (2,1): w = 1: (6/5)^2 = 1.44
    # Sum = 5.5025 + 9.8025 a; loss = sum / 3.
    expected = (5.5025 + 9.8025 * A) / 3
    loss = RelaxedContrastiveLoss()(STUDENT, TEACHER)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_hand_worked_global_and_no_normalisation():
    # global: mean over all 9 entries = (2 * (1 + 3 + 2)) / 9 = 4/3 -> d01 = 3/4, d02 = 9/4, d12 = 3/2.
    #   pairs (0,1),(1,0): 2 (0.5625 a + 0.0625 (1 - a)); (0,2),(2,0): 2 * 5.0625 a; (1,2),(2,1): 2 * 2.25
    #   sum = 4.625 + 11.125 a
    assert RelaxedContrastiveLoss(normalize="global")(STUDENT, TEACHER).item() == pytest.approx(
        (4.625 + 11.125 * A) / 3, rel=1e-12
    )
    # none: d = D. (0,1),(1,0): a * 1 each; (0,2),(2,0): 9 a each; (1,2),(2,1): w = 1: 4 each -> 8 + 20 a
    assert RelaxedContrastiveLoss(normalize="none")(STUDENT, TEACHER).item() == pytest.approx(
        (8 + 20 * A) / 3, rel=1e-12
    )


@pytest.mark.parametrize("normalize", ["row", "global", "none"])
@pytest.mark.parametrize("sigma, delta", [(1.0, 1.0), (0.5, 1.5)])
def test_matches_brute_force_on_random_batches(normalize, sigma, delta):
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(9, 4, generator=generator, dtype=torch.float64)
    teacher = torch.randn(9, 6, generator=generator, dtype=torch.float64)
    loss = RelaxedContrastiveLoss(sigma=sigma, delta=delta, normalize=normalize)(student, teacher)
    assert loss.item() == pytest.approx(reference_relaxed(student, teacher, sigma, delta, normalize), rel=1e-10)


def test_student_l2_option_normalises_student_rows():
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(7, 3, generator=generator, dtype=torch.float64)
    teacher = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    loss = RelaxedContrastiveLoss(student_l2=True)(student, teacher)
    unit = student / student.norm(dim=1, keepdim=True)
    assert loss.item() == pytest.approx(reference_relaxed(unit, teacher), rel=1e-10)


def test_gradient_matches_finite_differences_of_reference():
    # The normaliser (row mean) depends on the student: a gradient that ignored it would differ here.
    generator = torch.Generator().manual_seed(2)
    student = torch.randn(5, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    RelaxedContrastiveLoss()(student, teacher).backward()
    base = student.detach().numpy()
    numeric = np.zeros_like(base)
    h = 1e-6
    for index in np.ndindex(base.shape):
        up, down = base.copy(), base.copy()
        up[index] += h
        down[index] -= h
        numeric[index] = (reference_relaxed(up, teacher) - reference_relaxed(down, teacher)) / (2 * h)
    np.testing.assert_allclose(student.grad.numpy(), numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("normalize", ["row", "global"])
def test_invariant_to_student_scale_and_translation(normalize):
    generator = torch.Generator().manual_seed(3)
    student = torch.randn(10, 4, generator=generator, dtype=torch.float64)
    teacher = torch.randn(10, 8, generator=generator, dtype=torch.float64)
    loss = RelaxedContrastiveLoss(normalize=normalize)
    base = loss(student, teacher)
    for scale in (1e-3, 0.5, 7.0, 1e3):
        assert loss(scale * student, teacher).item() == pytest.approx(base.item(), rel=1e-9)
    shift = torch.randn(1, 4, generator=generator, dtype=torch.float64) * 100
    assert loss(student + shift, teacher).item() == pytest.approx(base.item(), rel=1e-9)


def test_invariant_to_permuting_both_batches():
    generator = torch.Generator().manual_seed(4)
    student = torch.randn(12, 4, generator=generator)
    teacher = torch.randn(12, 8, generator=generator)
    order = torch.randperm(12, generator=generator)
    loss = RelaxedContrastiveLoss()
    assert loss(student[order], teacher[order]).item() == pytest.approx(loss(student, teacher).item(), rel=1e-5)


def test_teacher_receives_no_gradient_and_student_does():
    student = torch.randn(6, 3, requires_grad=True)
    teacher = torch.randn(6, 5, requires_grad=True)
    RelaxedContrastiveLoss()(student, teacher).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_coincident_students_give_finite_loss_and_gradient():
    student = torch.tensor([[0.0, 1.0], [0.0, 1.0], [2.0, 0.0], [1.0, 1.0]], requires_grad=True)
    teacher = torch.randn(4, 3)
    loss = RelaxedContrastiveLoss()(student, teacher)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()


@pytest.mark.parametrize("normalize", ["row", "global", "none"])
def test_binary_teacher_weights_equal_label_contrastive(normalize):
    # One-hot teachers: same class -> ||t_i - t_j||^2 = 0 -> w = 1; other class -> 2 -> w = exp(-2/sigma),
    # which is 0 in float64 for sigma = 1e-3.  The relaxed loss must then be the labelled loss.
    generator = torch.Generator().manual_seed(5)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 3])
    student = torch.randn(8, 4, generator=generator, dtype=torch.float64)
    relaxed = RelaxedContrastiveLoss(sigma=1e-3, normalize=normalize)(student, F.one_hot(labels).double())
    labelled = ContrastiveLoss(normalize=normalize)(student, labels)
    assert relaxed.item() == pytest.approx(labelled.item(), rel=1e-12)


def test_label_contrastive_hand_worked():
    # Students 0, 1, 3 on a line, labels (0, 0, 1); row-normalised d as in the relaxed case above:
    # (0,1) same: (3/4)^2 = 0.5625 | (0,2) diff: relu(1 - 9/4)^2 = 0 | (1,0) same: 1 | (1,2) diff: 0
    # (2,0) diff: 0 | (2,1) diff: 0.  loss = 1.5625 / 3; with delta = 2: add (2-9/4)->0, (2-2)=0,
    # (2-9/5)^2 = 0.04, (2-6/5)^2 = 0.64 -> (1.5625 + 0.68) / 3.
    labels = torch.tensor([0, 0, 1])
    assert ContrastiveLoss()(STUDENT, labels).item() == pytest.approx(1.5625 / 3, rel=1e-12)
    assert ContrastiveLoss(delta=2.0)(STUDENT, labels).item() == pytest.approx(2.2425 / 3, rel=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"sigma": 0.0}, "sigma"), ({"delta": -1.0}, "delta"), ({"normalize": "rows"}, "normalize")],
)
def test_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RelaxedContrastiveLoss(**kwargs)


def test_rejects_bad_inputs():
    loss = RelaxedContrastiveLoss()
    with pytest.raises(ValueError, match="same number of rows"):
        loss(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="student must be 2-D"):
        loss(torch.randn(4), torch.randn(4, 3))
    with pytest.raises(ValueError, match="labels"):
        ContrastiveLoss()(torch.randn(4, 3), torch.tensor([0.0, 1.0, 0.0, 1.0]))
