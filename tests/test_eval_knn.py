"""Weighted cosine kNN against a brute-force loop and a hand-worked vote."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.eval.knn import knn_classify


def brute_force_knn(train_x, train_y, test_x, k, temperature):
    """Per test item: all cosines, stable sort, the k best vote exp(cos / T), largest total wins,
    ties to the smallest label."""
    train = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    labels = np.unique(train_y)
    predictions = []
    for query in test_x / np.linalg.norm(test_x, axis=1, keepdims=True):
        similarities = train @ query
        nearest = np.argsort(-similarities, kind="stable")[:k]
        votes = {label: 0.0 for label in labels}
        for j in nearest:
            votes[train_y[j]] += np.exp(similarities[j] / temperature)
        predictions.append(max(labels, key=lambda label: (votes[label], -label)))
    return np.array(predictions)


@pytest.mark.parametrize(("k", "temperature"), [(1, 0.1), (7, 0.1), (25, 0.5), (200, 0.07)])
def test_matches_brute_force(k, temperature):
    rng = np.random.default_rng(k)
    train_y = rng.integers(0, 5, size=200) * 3 + 2  # labels 2, 5, ..., 14: not 0..C-1
    centres = rng.standard_normal((15, 6))
    train_x = centres[train_y] + 1.2 * rng.standard_normal((200, 6))
    test_y = rng.integers(0, 5, size=80) * 3 + 2
    test_x = centres[test_y] + 1.2 * rng.standard_normal((80, 6))
    expected = (brute_force_knn(train_x, train_y, test_x, k, temperature) == test_y).mean()
    assert 0.2 < expected < 1.0
    got = knn_classify(
        *(
            torch.tensor(a, dtype=torch.float32) if a.dtype.kind == "f" else torch.tensor(a)
            for a in (train_x, train_y, test_x, test_y)
        ),
        k=k,
        temperature=temperature,
        memory_budget_bytes=4096,
    )
    assert got["knn_top1"] == pytest.approx(expected, abs=1e-12)


def test_hand_worked_weighted_vote_beats_majority():
    # Query (1, 0). Train: one class-0 item at cos 1, two class-1 items at cos 0 (directions (0, +-1)).
    # k = 3, T = 0.1: class 0 scores e^10 = 22026, class 1 scores 2 e^0 = 2 -> predicts 0,
    # although class 1 holds the majority of the neighbours.
    train_x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, -3.0]])
    train_y = torch.tensor([0, 1, 1])
    test_x, test_y = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    assert knn_classify(train_x, train_y, test_x, test_y, k=3, temperature=0.1)["knn_top1"] == 1.0
    # With T = 100 the weights are ~1 each: e^0.01 = 1.01 for class 0 against 2 for class 1.
    assert knn_classify(train_x, train_y, test_x, test_y, k=3, temperature=100.0)["knn_top1"] == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, "k must be"),
        ({"k": 11}, "k must be"),
        ({"temperature": 0.0}, "temperature"),
        ({"test_x": torch.zeros(4, 2)}, "3 dimensions but test_x has 2"),
        ({"train_x": torch.full((10, 3), float("inf"))}, "train_x contains NaN or infinite"),
    ],
)
def test_bad_input_is_refused(kwargs, message):
    arguments = {
        "train_x": torch.randn(10, 3),
        "train_y": torch.arange(10) % 2,
        "test_x": torch.randn(4, 3),
        "test_y": torch.zeros(4, dtype=torch.long),
        "k": 3,
    } | kwargs
    with pytest.raises(ValueError, match=message):
        knn_classify(**arguments)
