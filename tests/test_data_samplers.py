"""ClassBalancedBatchSampler: P distinct classes x K images per batch, reproducible per (seed, epoch)."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from pipeline.data.samplers import ClassBalancedBatchSampler

# Ten classes with 1..10 images each (55 images), ids not contiguous, order interleaved.
CLASS_SIZES = {3 * c + 7: c + 1 for c in range(10)}
LABELS = torch.tensor([label for round_ in range(10) for label, size in CLASS_SIZES.items() if round_ < size])


def batches(sampler: ClassBalancedBatchSampler, epoch: int = 0) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize("p, k", [(4, 3), (10, 2), (1, 5), (3, 1)])
def test_every_batch_has_p_distinct_classes_times_k(p, k):
    sampler = ClassBalancedBatchSampler(LABELS, classes_per_batch=p, samples_per_class=k, seed=0)
    result = batches(sampler)
    assert len(result) == len(sampler) == max(1, len(LABELS) // (p * k))  # 55 // (P * K), at least one
    for batch in result:
        counts = Counter(LABELS[batch].tolist())
        assert len(batch) == p * k
        assert len(counts) == p and set(counts.values()) == {k}


def test_large_classes_without_replacement_small_classes_with_replacement():
    k = 4
    sampler = ClassBalancedBatchSampler(LABELS, classes_per_batch=5, samples_per_class=k, seed=2)
    seen_small = 0
    for epoch in range(10):
        for batch in batches(sampler, epoch):
            for label in set(LABELS[batch].tolist()):
                picked = [i for i in batch if LABELS[i] == label]
                members = set(torch.nonzero(LABELS == label).flatten().tolist())
                assert set(picked) <= members
                if CLASS_SIZES[label] >= k:
                    assert len(set(picked)) == k  # no repeats when the class is large enough
                else:
                    seen_small += 1
                    assert len(set(picked)) <= CLASS_SIZES[label] < k  # repeats are unavoidable
    assert seen_small > 0


def test_deterministic_for_seed_and_epoch_and_different_across_epochs_and_seeds():
    def make(seed: int) -> ClassBalancedBatchSampler:
        return ClassBalancedBatchSampler(LABELS, classes_per_batch=4, samples_per_class=2, seed=seed)

    assert batches(make(0), epoch=3) == batches(make(0), epoch=3)
    sampler = make(0)
    assert batches(sampler, 0) != batches(sampler, 1)
    assert batches(sampler, 0) == batches(make(0), 0)  # set_epoch back to 0 replays epoch 0
    assert batches(make(0), 0) != batches(make(1), 0)


def test_every_class_gets_sampled_over_epochs():
    sampler = ClassBalancedBatchSampler(LABELS, classes_per_batch=4, samples_per_class=2, seed=5)
    seen = {int(LABELS[i]) for epoch in range(20) for batch in batches(sampler, epoch) for i in batch}
    assert seen == set(CLASS_SIZES)


@pytest.mark.parametrize("p, k, message", [
    (0, 2, "classes_per_batch must be in 1..10"),
    (11, 2, r"classes_per_batch must be in 1..10 \(classes present\), got 11"),
    (2, 0, "samples_per_class must be >= 1, got 0"),
])
def test_bad_arguments_raise(p, k, message):
    with pytest.raises(ValueError, match=message):
        ClassBalancedBatchSampler(LABELS, classes_per_batch=p, samples_per_class=k)
