"""Self-Taught Metric Learning without Labels (Kim, Kim, Cho, Kwak, CVPR 2022): the relaxed contrastive loss
turned unsupervised. The teacher is a momentum copy of the student (`pipeline.train.ema`); its pairwise
similarities, refined by contextual similarity, are the relaxed pair labels; the student has an embedding
head f and a wider head g, both trained with that loss, and f also learns g's neighbourhood by a KL term.

Read from the official code (tjddus9597/STML-CVPR22, `code/loss.py`), not copied:
- W_P = exp(-||t_i - t_j||^2 / sigma) on the L2-normalised teacher embedding of g;
- W_C from mutual k-nearest neighbours in W_P, the views of one image made each other's nearest, with
  k = neighbours x views: R(i) the mutual neighbours of i (i among them), W~_ij = |R(i) n R(j)| / |R(i)| for j in
  R(i), averaged over i's round(k / 2) nearest rows (query expansion) and made symmetric; W = (W_P + W_C) / 2;
- the relaxed contrastive sum on student distances divided by their row mean, normalised per pair, n(n - 1)
  (`contrastive.PER_PAIR`), where the 2021 transfer loss divides by n (`PER_ROW`);
- KL(softmax(-d_g) || softmax(-d_f)) with d_g detached, summed, over n (row-mean-normalised distances).
"""
from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from pipeline.losses.contract import Loss, LossParams, Range
from pipeline.losses.contrastive import PER_PAIR, normalized_student_distances, weighted_contrastive
from pipeline.losses.distances import pairwise_distances
from pipeline.losses.validation import PositiveFloat, PositiveInt, check_embeddings


def pairwise_similarity(teacher: Tensor, sigma: float) -> Tensor:
    """W_P: exp(-||t_i - t_j||^2 / sigma) on L2-normalised rows, 1 on the diagonal; no gradient."""
    with torch.no_grad():
        squared = pairwise_distances(F.normalize(teacher.detach(), dim=1), squared=True, eps=0.0)
        return torch.exp(-squared / sigma)


def contextual_similarity(similarity: Tensor, same_image: Tensor, k: int) -> Tensor:
    """W_C of STML (Sec. 3.2) from `similarity` (W_P), with `same_image` (n, n) marking the views of one image.

    Vectorised: R = mutual k-NN indicator; W~ = R * (R @ R^T) / |R(i)|; W^ = mean of W~ over each row's
    round(k / 2) nearest; W_C = (W^ + W^^T) / 2."""
    with torch.no_grad():
        n = similarity.shape[0]
        k = min(k, n)
        ranked = similarity.masked_fill(same_image, 1.0)
        nearest = ranked.topk(k, dim=1).indices
        knn = torch.zeros_like(similarity).scatter_(1, nearest, 1.0)
        mutual = knn * knn.T
        shared = mutual @ mutual.T  # |R(i) n R(j)|
        tilde = mutual * shared / mutual.sum(dim=1, keepdim=True).clamp_min(1.0)
        half = nearest[:, : int(round(k / 2))]
        hat = tilde[half].mean(dim=1)
        return (hat + hat.T) / 2


def self_distillation(student_f: Tensor, student_g: Tensor) -> Tensor:
    """KL from the wide head's neighbourhood to the embedding's: sum over rows of
    KL(softmax(-d_g) || softmax(-d_f)) / n, d_g detached, both distance matrices over their row means."""
    d_f = normalized_student_distances(student_f, "row", False)
    d_g = normalized_student_distances(student_g, "row", False).detach()
    return F.kl_div(F.log_softmax(-d_f, dim=1), F.softmax(-d_g, dim=1), reduction="sum") / len(student_f)


class STMLLoss(Loss):
    """`loss(student_f, student_g, teacher_g, indices)` of Self-Taught Metric Learning: the relaxed contrastive
    loss of each student head against W = (W_P + W_C) / 2 of the momentum teacher's g head, averaged, plus the
    KL self-distillation of f from g. `indices` (dataset indices, repeated for each view) mark the views of
    one image. `parts` holds the last call's two terms (for logging)."""

    role = "self_taught"
    inputs = ("student", "teacher", "indices")
    runtime_args = ("views",)  # the setting section's `views` (k = neighbours x views)

    class Params(LossParams):
        sigma: PositiveFloat = 1.0
        delta: PositiveFloat = 1.0
        # the official --num_neighbors: images per query in a nearest-neighbour batch, and k = neighbours x views
        neighbours: PositiveInt = 5
        momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.999  # the EMA teacher's (--momentum; 0.9 for SOP)
        wide_dim: PositiveInt = 1024  # the g head's width (--bg_embedding_size)
        student_l2: bool = False  # the official --student_norm (0)

    # the relaxed loss's two, and the teacher's momentum (the official runs use 0.999 and, on SOP, 0.9)
    search_space = {"sigma": Range(0.1, 10.0), "delta": Range(0.5, 2.0), "momentum": Range(0.9, 0.999, log=False)}

    def __init__(self, sigma: float = 1.0, delta: float = 1.0, neighbours: int = 5, momentum: float = 0.999,
                 wide_dim: int = 1024, student_l2: bool = False, views: int = 2):
        super().__init__()
        self.params = self.checked_params(sigma=sigma, delta=delta, neighbours=neighbours, momentum=momentum,
                                          wide_dim=wide_dim, student_l2=student_l2)
        if views < 1:
            raise ValueError(f"STMLLoss: views must be >= 1, got {views}")
        self.views = views
        self.parts: dict[str, float] = {}

    def targets(self, teacher_g: Tensor, indices: Tensor) -> Tensor:
        """W = (W_P + W_C) / 2, the relaxed pair labels."""
        similarity = pairwise_similarity(teacher_g, self.params.sigma)
        same_image = indices[:, None] == indices[None, :]
        k = self.params.neighbours * self.views
        return (similarity + contextual_similarity(similarity, same_image, k)) / 2

    def relaxed(self, student: Tensor, weights: Tensor) -> Tensor:
        distances = normalized_student_distances(student, "row", self.params.student_l2)
        return weighted_contrastive(distances, weights.to(distances.dtype), self.params.delta, per=PER_PAIR)

    def forward(self, student_f: Tensor, student_g: Tensor, teacher_g: Tensor, indices: Tensor) -> Tensor:
        for name, rows in (("student_f", student_f), ("student_g", student_g), ("teacher_g", teacher_g)):
            check_embeddings(name, rows)
        weights = self.targets(teacher_g, indices)
        relaxed = (self.relaxed(student_f, weights) + self.relaxed(student_g, weights)) / 2
        distilled = self_distillation(
            F.normalize(student_f, dim=1) if self.params.student_l2 else student_f,
            F.normalize(student_g, dim=1) if self.params.student_l2 else student_g)
        self.parts = {"relaxed": float(relaxed.detach()), "kl": float(distilled.detach())}
        return relaxed + distilled
