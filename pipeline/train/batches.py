"""Index batches that depend only on (seed, epoch), so a resumed run replays the same batches.

In-memory data sets are sliced with these indices (no per-image DataLoader workers: on 2 cores they
fight the trainer for the CPU, see DESIGN.md); file-based sets hand them to a DataLoader as its batch
sampler. Under DDP every rank computes the same global batch and keeps its contiguous shard.
"""

from __future__ import annotations

import torch

from pipeline.data.samplers import ClassBalancedBatchSampler, SeededBatchSampler


class BatchPlan:
    def __init__(
        self,
        labels: torch.Tensor,
        batch_size: int,
        seed: int,
        class_balanced: bool = False,
        samples_per_class: int = 4,
        world_size: int = 1,
        rank: int = 0,
    ) -> None:
        num_items = int(labels.shape[0])
        if batch_size > num_items:
            raise ValueError(f"batch_size {batch_size} exceeds the data set size {num_items}")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} must be divisible by the world size {world_size}")
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.world_size = world_size
        self.rank = rank
        self.sampler = None
        if class_balanced:
            self.sampler = ClassBalancedBatchSampler(
                labels, batch_size // samples_per_class, samples_per_class, seed=seed
            )
        self.steps_per_epoch = len(self.sampler) if self.sampler is not None else num_items // batch_size

    def draw_from(self, sampler: SeededBatchSampler) -> None:
        """Draw the coming epochs' batches from `sampler` (an objective's own: STML's nearest neighbours),
        which must make the epochs this plan counts."""
        if len(sampler) != self.steps_per_epoch:
            raise ValueError(f"the objective's sampler makes {len(sampler)} batches per epoch, the plan "
                             f"{self.steps_per_epoch}")
        self.sampler = sampler

    def global_batches(self, epoch: int) -> list[torch.Tensor]:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
            return [torch.tensor(batch, dtype=torch.long) for batch in self.sampler]
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.num_items, generator=generator)
        return list(order[: self.steps_per_epoch * self.batch_size].view(self.steps_per_epoch, self.batch_size))

    def local_batches(self, epoch: int, skip: int = 0) -> list[torch.Tensor]:
        """This rank's shard of each global batch of ``epoch``, the first ``skip`` batches left out."""
        shard = self.batch_size // self.world_size
        return [b[self.rank * shard : (self.rank + 1) * shard] for b in self.global_batches(epoch)[skip:]]
