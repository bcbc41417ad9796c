"""Relational Knowledge Distillation (Park et al., CVPR 2019): distance + angle terms."""

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.distributed import gather_batch
from pipeline.losses.contract import Loss, LossParams, Range
from pipeline.losses.distances import off_diagonal, pairwise_distances
from pipeline.losses.validation import NonNegativeFloat, PositiveInt, check_pair


def mean_normalized_distances(embeddings: Tensor) -> Tensor:
    """Distances divided by the mean of the off-diagonal distances (RKD's scale normalisation)."""
    distances = pairwise_distances(embeddings)
    return distances / distances[off_diagonal(len(distances), distances.device)].mean()


def triplet_angles(embeddings: Tensor, anchors: Tensor, eps: float = 1e-12) -> Tensor:
    """(r, n, n) cosines of the angle at vertex anchors[r] between x_j and x_k; 0 where j or k is the
    anchor itself (its zero difference vector normalises to 0, as in the original code).

    Unit difference vectors (r, n, d) and one batched matmul, as in the RKD code: measured 3.7x faster
    on this CPU than expanding the Gram matrix into the (r, n, n) inner products elementwise (0.07 s vs
    0.27 s forward + backward at n = 512, d = 64, r = 32), with the same values to 1e-15 in float64.
    """
    if embeddings.dtype in (torch.float16, torch.bfloat16):
        embeddings = embeddings.float()
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        units = F.normalize(embeddings[None, :, :] - embeddings[anchors][:, None, :], p=2, dim=2, eps=eps)
        return torch.bmm(units, units.transpose(1, 2))


class RKDLoss(Loss):
    """`loss(student, teacher)` = distance_weight * smooth-L1(distances) + angle_weight * smooth-L1(angles).

    Each side's distances are divided by its own mean off-diagonal distance; both smooth-L1 terms are
    means over all entries (n^2 and r n^2), as in the RKD and label-relaxation code.  The angle term
    looks at every triplet (O(n^3) memory); `angle_max_rows=r` keeps r random anchor rows instead,
    an unbiased estimate that makes large CPU batches affordable.  Under torch.distributed the loss is
    computed over the all-gathered global batch (ranks draw their anchor rows independently).
    """

    class Params(LossParams):
        distance_weight: NonNegativeFloat = 1.0
        angle_weight: NonNegativeFloat = 2.0
        angle_max_rows: PositiveInt | None = None

    # The paper's 1 and 2 (Park et al., Sec. 4), a factor of ten either way.
    search_space = {"distance_weight": Range(0.1, 10.0), "angle_weight": Range(0.2, 20.0)}

    def __init__(
        self, distance_weight: float = 1.0, angle_weight: float = 2.0, angle_max_rows: int | None = None
    ):
        super().__init__()
        self.params = self.checked_params(distance_weight=distance_weight, angle_weight=angle_weight,
                                          angle_max_rows=angle_max_rows)

    def angle_anchors(self, n: int, device: torch.device) -> Tensor:
        if self.angle_max_rows is None or self.angle_max_rows >= n:
            return torch.arange(n, device=device)
        return torch.randperm(n, device=device)[: self.angle_max_rows]

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        check_pair(student, teacher)
        student, teacher = gather_batch(student), gather_batch(teacher.detach())
        with torch.no_grad():
            teacher_distances = mean_normalized_distances(teacher)
        student_distances = mean_normalized_distances(student)
        loss = self.distance_weight * F.smooth_l1_loss(student_distances, teacher_distances.to(student_distances.dtype))
        if self.angle_weight > 0:
            anchors = self.angle_anchors(len(student), student.device)
            with torch.no_grad():
                teacher_angles = triplet_angles(teacher, anchors)
            student_angles = triplet_angles(student, anchors)
            loss = loss + self.angle_weight * F.smooth_l1_loss(student_angles, teacher_angles.to(student_angles.dtype))
        return loss

    def extra_repr(self) -> str:
        return (
            f"distance_weight={self.distance_weight}, angle_weight={self.angle_weight}, "
            f"angle_max_rows={self.angle_max_rows}"
        )
