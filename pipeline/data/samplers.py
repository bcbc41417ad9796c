"""Class-balanced batches (P classes x K images), the sampling of the Proxy-Anchor / relaxed-contrastive recipe;
nearest-neighbour batches, Self-Taught Metric Learning's sampling without labels."""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class SeededBatchSampler(Sampler[list[int]]):
    """`num_batches` batches per epoch whose order depends only on (seed, epoch), so a resumed run replays the
    same batches: call `set_epoch` before each epoch; a subclass draws from `generator()`."""

    def __init__(self, num_batches: int, seed: int) -> None:
        self.num_batches = max(1, num_batches)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)


class ClassBalancedBatchSampler(SeededBatchSampler):
    """Each batch holds `classes_per_batch` distinct classes with `samples_per_class` images each.

    Classes with fewer images than K are sampled with replacement.
    """

    def __init__(self, labels: torch.Tensor, classes_per_batch: int, samples_per_class: int, seed: int = 0):
        labels = torch.as_tensor(labels, dtype=torch.long)
        classes = torch.unique(labels)
        if samples_per_class < 1:
            raise ValueError(f"samples_per_class must be >= 1, got {samples_per_class}")
        if not 1 <= classes_per_batch <= len(classes):
            raise ValueError(f"classes_per_batch must be in 1..{len(classes)} (classes present), got {classes_per_batch}")
        super().__init__(len(labels) // (classes_per_batch * samples_per_class), seed)
        self.by_class = [torch.nonzero(labels == c).flatten() for c in classes]
        self.classes_per_batch = classes_per_batch
        self.samples_per_class = samples_per_class

    def __iter__(self) -> Iterator[list[int]]:
        generator = self.generator()
        num_classes = len(self.by_class)
        order = torch.randperm(num_classes, generator=generator)
        cursor = 0
        for _ in range(self.num_batches):
            if cursor + self.classes_per_batch > num_classes:
                order, cursor = torch.randperm(num_classes, generator=generator), 0
            batch = []
            for c in order[cursor: cursor + self.classes_per_batch].tolist():
                members = self.by_class[c]
                if len(members) >= self.samples_per_class:
                    pick = torch.randperm(len(members), generator=generator)[: self.samples_per_class]
                else:
                    pick = torch.randint(len(members), (self.samples_per_class,), generator=generator)
                batch.extend(members[pick].tolist())
            cursor += self.classes_per_batch
            yield batch


class NearestNeighbourBatchSampler(SeededBatchSampler):
    """STML's `NNBatchSampler` (Kim et al., CVPR 2022, code/dataset/sampler.py): each batch is
    batch_size // per_image random query images, each followed by its per_image nearest images (the query
    itself first), so every batch holds neighbourhoods the contextual similarity can find. `neighbours` is
    that (n, per_image) table, from the model's embedding of the whole train set, which the caller
    recomputes each epoch (`pipeline.train.stml_objective`)."""

    def __init__(self, neighbours: torch.Tensor, batch_size: int, seed: int = 0):
        n, per_image = neighbours.shape
        if batch_size < per_image:
            raise ValueError(f"batch_size {batch_size} holds no query with its {per_image} neighbours")
        super().__init__(n // batch_size, seed)
        self.queries = min(batch_size // per_image, n)
        self.neighbours = neighbours.cpu()

    def __iter__(self) -> Iterator[list[int]]:
        generator = self.generator()
        for _ in range(self.num_batches):
            queries = torch.randperm(len(self.neighbours), generator=generator)[: self.queries]
            yield self.neighbours[queries].flatten().tolist()
