"""Probabilistic Knowledge Transfer (Passalis & Tefas, ECCV 2018)."""

import torch
from torch import Tensor

from pipeline.distributed import gather_batch
from pipeline.losses.contract import Loss, LossParams
from pipeline.losses.validation import PositiveFloat, check_pair


def cosine_probabilities(embeddings: Tensor, eps: float) -> Tensor:
    """Rows of (cos + 1) / 2 similarities, each row normalised to sum to 1 (diagonal included)."""
    unit = embeddings / (embeddings.norm(dim=1, keepdim=True) + eps)
    similarity = (unit @ unit.T + 1.0) / 2.0
    return similarity / similarity.sum(dim=1, keepdim=True)


class PKTLoss(Loss):
    """`loss(student, teacher)`: KL(teacher || student) between cosine-similarity distributions,
    averaged over all n^2 entries (the `mean` of the authors' code, not a per-row sum).
    Under torch.distributed the loss is computed over the all-gathered global batch.
    """

    class Params(LossParams):
        eps: PositiveFloat = 1e-7

    def __init__(self, eps: float = 1e-7):
        super().__init__()
        self.params = self.checked_params(eps=eps)

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        check_pair(student, teacher)
        student, teacher = gather_batch(student), gather_batch(teacher.detach())
        with torch.no_grad():
            teacher_p = cosine_probabilities(teacher, self.eps).to(student.dtype)
        student_p = cosine_probabilities(student, self.eps)
        return torch.mean(teacher_p * torch.log((teacher_p + self.eps) / (student_p + self.eps)))
