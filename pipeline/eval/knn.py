"""Weighted cosine kNN classifier on frozen features (Wu et al. 2018; the kNN monitor of MoCo/SimCLR code).

Each test item takes its k most cosine-similar training items; neighbour j votes for its class with
weight exp(sim_j / temperature); the class with the largest total wins (ties: the lower class index).
"""

from __future__ import annotations

import torch
from torch import Tensor

from pipeline.eval.checks import check_embeddings_and_labels
from pipeline.eval.neighbours import iter_nearest_neighbours


def knn_classify(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    k: int = 200,
    temperature: float = 0.1,
    memory_budget_bytes: int = 256 * 2**20,
) -> dict[str, float]:
    """Top-1 accuracy ``knn_top1`` of the weighted kNN vote, computed in chunks of test rows sized from
    ``memory_budget_bytes`` on train_x's device. Test labels absent from train count as errors."""
    check_embeddings_and_labels(train_x, train_y, name="train_x")
    check_embeddings_and_labels(test_x, test_y, name="test_x")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train_x has {train_x.shape[1]} dimensions but test_x has {test_x.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(train_x):
        raise ValueError(f"k must be an integer in [1, {len(train_x)}] (the training set size), got {k!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    device = train_x.device
    classes, train_targets = train_y.unique(return_inverse=True)
    train_targets = train_targets.to(device)
    test_x, test_y = test_x.to(device), test_y.to(device)
    correct = 0
    for start, similarities, neighbours in iter_nearest_neighbours(
        test_x, train_x, k, distance="cosine", memory_budget_bytes=memory_budget_bytes
    ):
        votes = torch.zeros(len(neighbours), len(classes), device=device)
        votes.scatter_add_(1, train_targets[neighbours], (similarities / temperature).exp())
        predicted = classes.to(device)[votes.argmax(dim=1)]
        correct += int((predicted == test_y[start : start + len(neighbours)]).sum())
    return {"knn_top1": correct / len(test_x)}
