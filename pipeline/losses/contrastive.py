"""The label-based contrastive loss on normalised distances, and the weighted form it shares with
the relaxed contrastive loss (which replaces the 0/1 labels by teacher similarities)."""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.distributed import gather_batch
from pipeline.losses.contract import Loss, LossParams
from pipeline.losses.distances import off_diagonal, pairwise_distances
from pipeline.losses.validation import PositiveFloat, check_embeddings, check_labels


class DistanceParams(LossParams):
    """The margin and distance normalisation shared by the label and the relaxed contrastive loss."""

    delta: PositiveFloat = 1.0
    normalize: Literal["row", "global", "none"] = "row"
    student_l2: bool = False


def normalized_student_distances(student: Tensor, normalize: str, student_l2: bool) -> Tensor:
    """Student distances divided by their row mean ("row": mean over all n entries of the row, zero
    diagonal included, as published), by the mean of the whole matrix ("global"), or left raw ("none").
    The gradient flows through the normaliser, as in the authors' code."""
    if student_l2:
        student = F.normalize(student, dim=1)
    distances = pairwise_distances(student)
    if normalize == "row":
        return distances / distances.mean(dim=1, keepdim=True).clamp_min(1e-12)
    if normalize == "global":
        return distances / distances.mean().clamp_min(1e-12)
    return distances


# The two normalisations of the weighted contrastive sum: by the n rows (Kim et al., CVPR 2021, the
# transfer loss) or by the n(n - 1) pairs (Kim, Kim, Cho, Kwak, CVPR 2022, Self-Taught Metric Learning's
# `RC_STML`, read in its code/loss.py).
PER_ROW, PER_PAIR = "per_row", "per_pair"


def weighted_contrastive(distances: Tensor, weights: Tensor, delta: float, per: str = PER_ROW) -> Tensor:
    """sum_{i != j} [w_ij d_ij^2 + (1 - w_ij) relu(delta - d_ij)^2], divided by n (`PER_ROW`) or by n(n - 1)
    (`PER_PAIR`)."""
    n = distances.shape[0]
    per_pair = weights * distances.pow(2) + (1 - weights) * torch.relu(delta - distances).pow(2)
    total = per_pair[off_diagonal(n, distances.device)].sum()
    return total / (n if per == PER_ROW else n * (n - 1))


class ContrastiveLoss(Loss):
    """Label-based contrastive loss, `loss(student, labels)`: w_ij = 1 for same class, else 0.

    The hard-label counterpart of RelaxedContrastiveLoss, with identical distance normalisation, so
    an ablation can swap soft teacher weights for labels and change nothing else.
    Under torch.distributed the loss is computed over the all-gathered global batch.
    """

    role = "supervised"
    inputs = ("student", "labels")
    Params = DistanceParams

    def __init__(self, delta: float = 1.0, normalize: str = "row", student_l2: bool = False):
        super().__init__()
        self.params = self.checked_params(delta=delta, normalize=normalize, student_l2=student_l2)

    def forward(self, student: Tensor, labels: Tensor) -> Tensor:
        check_embeddings("student", student)
        check_labels("labels", labels, student.shape[0])
        student, labels = gather_batch(student), gather_batch(labels)
        distances = normalized_student_distances(student, self.params.normalize, self.params.student_l2)
        weights = (labels[:, None] == labels[None, :]).to(distances.dtype)
        return weighted_contrastive(distances, weights, self.params.delta)
