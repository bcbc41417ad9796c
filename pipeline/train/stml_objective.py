"""Self-Taught Metric Learning's training step (Kim, Kim, Cho, Kwak, CVPR 2022), as its official `main.py`
runs it, read there and written here: the student has its embedding head f and a wide head g on the same
pooled features; the teacher is a momentum copy of both, kept in eval mode; every epoch the batches are
rebuilt from nearest neighbours in the student's g embedding of the whole train set (eval mode, no
augmentation); after each backward pass and before the optimiser step the teacher moves towards the student.
No label is read: `forward` takes the loop's labels argument and never touches it.

One deviation, on purpose: the teacher starts as a copy of the student, where the official code builds a
second model whose random heads differ from the student's; a copy makes the first targets the student's own
neighbourhood rather than a second random projection's (the momentum teacher convention of MoCo and BYOL).
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from pipeline.data.samplers import NearestNeighbourBatchSampler
from pipeline.eval.features import extract_features
from pipeline.eval.neighbours import iter_nearest_neighbours
from pipeline.losses.stml import STMLLoss
from pipeline.models.embedding_model import EmbeddingModel
from pipeline.models.heads import EmbeddingHead
from pipeline.train.ema import momentum_update
from pipeline.train.objectives import Objective, full_precision


class _Wide(nn.Module):
    """g of a model: its wide head on its pooled features (the sampler's and the teacher's embedding)."""

    def __init__(self, model: EmbeddingModel, head: nn.Module) -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.model.pooled_features(x))


class STMLObjective(Objective):
    """`student` (f: its embedding) with a wide head g of `loss.wide_dim`, its momentum teacher, `loss.views`
    augmented views per image and nearest-neighbour batches of `loss.neighbours` images per query over the
    `n_data` training images. `plain` is the evaluation transform the neighbours are found under."""

    def __init__(self, student: EmbeddingModel, augment: nn.Module, plain: nn.Module, loss: STMLLoss,
                 n_data: int) -> None:
        super().__init__(augment)
        self.student = student
        self.wide = EmbeddingHead(student.backbone.num_features, loss.wide_dim)
        self.criterion = loss
        self.teacher = copy.deepcopy(student).requires_grad_(False)
        self.teacher_wide = copy.deepcopy(self.wide).requires_grad_(False)
        self.__dict__["plain"] = plain  # a transform, not state
        # The neighbour table of the current epoch travels in the checkpoint: a run resumed mid-epoch replays
        # the batches the uninterrupted run drew, from neighbours found before the epoch's first step.
        self.register_buffer("neighbours", torch.zeros(n_data, loss.neighbours, dtype=torch.long))
        self.register_buffer("neighbours_epoch", torch.tensor(-1))

    @property
    def model(self) -> EmbeddingModel:
        return self.student

    def train(self, mode: bool = True) -> STMLObjective:
        super().train(mode)
        self.teacher.eval()  # the official loop keeps the teacher in eval mode (its BatchNorm statistics)
        self.teacher_wide.eval()
        return self

    def parameter_groups(self) -> list[dict]:
        trained = [*self.student.parameters(), *self.wide.parameters()]
        return [{"params": [p for p in trained if p.requires_grad], "lr_scale": 1.0}]

    def setup(self, device: torch.device) -> None:
        self.plain.to(device)

    def epoch_sampler(self, epoch: int, images: Tensor, batch_size: int, seed: int) -> NearestNeighbourBatchSampler:
        """This epoch's batches: each query with its nearest images in the student's g embedding."""
        if int(self.neighbours_epoch) != epoch:
            wide, _ = extract_features(_Wide(self.student, self.wide), images, batch_size=max(batch_size, 256),
                                       device=images.device, transform=self.plain, on_device=True)
            k = self.neighbours.shape[1]
            found = [indices for _, _, indices in iter_nearest_neighbours(wide, wide, k, distance="euclidean")]
            self.neighbours.copy_(torch.cat(found))
            self.neighbours_epoch.fill_(epoch)
        return NearestNeighbourBatchSampler(self.neighbours, batch_size, seed)

    def before_optimizer_step(self) -> None:
        momentum_update(self.student, self.teacher, self.criterion.momentum)
        momentum_update(self.wide, self.teacher_wide, self.criterion.momentum)

    def forward(self, images: Tensor, labels: Tensor, indices: Tensor) -> Tensor:
        views = torch.cat([self.view(images) for _ in range(self.criterion.views)])
        pooled = self.student.pooled_features(views)
        f, g = self.student.embed_pooled(pooled), self.wide(pooled)
        with torch.no_grad():
            teacher_g = self.teacher_wide(self.teacher.pooled_features(views))
        with full_precision(images.device):
            return self.criterion(f.float(), g.float(), teacher_g.float(), indices.repeat(self.criterion.views))
