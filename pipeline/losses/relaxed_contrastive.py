"""The relaxed contrastive loss of Kim et al., CVPR 2021 (Embedding Transfer with Label Relaxation)."""

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.distributed import gather_batch
from pipeline.losses.contract import Loss, Range
from pipeline.losses.contrastive import DistanceParams, normalized_student_distances, weighted_contrastive
from pipeline.losses.distances import pairwise_distances
from pipeline.losses.validation import PositiveFloat, check_pair


class RelaxedContrastiveLoss(Loss):
    """`loss(student, teacher)`: contrastive loss whose pair labels are the teacher's similarities.

    - teacher rows are L2-normalised here; w_ij = exp(-||t_i - t_j||^2 / sigma), without gradient;
    - student distances are raw (or L2-normalised with `student_l2=True`), divided per row by the row
      mean over all n entries, zero diagonal included (`normalize="row"`, the published form);
    - loss = (1/n) * sum_{i != j} [w_ij d_ij^2 + (1 - w_ij) relu(delta - d_ij)^2].
    As in the authors' code, only the diagonal is masked: their `pdist` clamps squared distances at
    1e-12, so coincident points still count as pairs, as every i != j pair does here.
    Under torch.distributed the loss is computed over the all-gathered global batch.
    """

    class Params(DistanceParams):
        sigma: PositiveFloat = 1.0

    # sigma: the paper's 1 for every dataset, a factor of ten either way; delta: the margin, halved or doubled.
    search_space = {"sigma": Range(0.1, 10.0), "delta": Range(0.5, 2.0)}

    def __init__(
        self, sigma: float = 1.0, delta: float = 1.0, normalize: str = "row", student_l2: bool = False
    ):
        super().__init__()
        self.params = self.checked_params(sigma=sigma, delta=delta, normalize=normalize, student_l2=student_l2)

    def teacher_weights(self, teacher: Tensor) -> Tensor:
        """Soft pair labels w_ij in (0, 1], 1 on the diagonal; never carries gradient."""
        with torch.no_grad():
            # eps=0: no gradient to protect, and coincident teachers must get w = 1 exactly.
            squared = pairwise_distances(F.normalize(teacher.detach(), dim=1), squared=True, eps=0.0)
            return torch.exp(-squared / self.params.sigma)

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        check_pair(student, teacher)
        student, teacher = gather_batch(student), gather_batch(teacher.detach())
        distances = normalized_student_distances(student, self.params.normalize, self.params.student_l2)
        weights = self.teacher_weights(teacher).to(distances.dtype)
        return weighted_contrastive(distances, weights, self.params.delta)
