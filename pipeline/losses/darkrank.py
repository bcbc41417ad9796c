"""Hard DarkRank (Chen et al., AAAI 2018) with the triplet term the label-relaxation paper added."""

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.distributed import gather_batch
from pipeline.losses.contract import Loss, LossParams, Range
from pipeline.losses.distances import pairwise_distances
from pipeline.losses.triplet import triplet_margin_loss
from pipeline.losses.validation import NonNegativeFloat, PositiveFloat, PositiveInt, check_labels, check_pair


def plackett_luce_log_likelihood(scores: Tensor) -> Tensor:
    """Per-row log-probability of the order given by the columns: sum_k [s_k - logsumexp(s_k..s_end)]."""
    tail_logsumexp = torch.logcumsumexp(scores.flip(1), dim=1).flip(1)
    return (scores - tail_logsumexp).sum(dim=1)


class HardDarkRankLoss(Loss):
    """`loss(student, teacher, labels)`: teacher's top-`list_length` neighbour list of each sample,
    scored by the student (score = -alpha * ||s_i - s_j||^beta on L2-normalised rows) under the
    Plackett-Luce model; minus the mean log-likelihood, plus `triplet_weight` * triplet loss
    (margin 0.2) on the L2-normalised student with class labels.

    The triplet term follows the label-relaxation code (its HardDarkRank adds a labelled triplet loss,
    following RKD's setting): it needs `labels`.  With `triplet_weight=0` the loss is label-free and
    `labels` may be omitted.  Under torch.distributed the loss is computed over the all-gathered batch.
    """

    inputs = ("student", "teacher", "labels")

    class Params(LossParams):
        alpha: PositiveFloat = 3.0
        beta: PositiveFloat = 3.0
        list_length: PositiveInt = 4
        triplet_margin: NonNegativeFloat = 0.2
        triplet_weight: NonNegativeFloat = 1.0

    # alpha, beta: the paper's 3 (Chen et al., Sec. 4.2) within [1, 10]; the triplet term's weight against the
    # list term a factor of ten either way (off, and not searched, where params.yaml sets it to 0).
    search_space = {"alpha": Range(1.0, 10.0), "beta": Range(1.0, 10.0), "triplet_weight": Range(0.1, 10.0)}

    @classmethod
    def inputs_for(cls, params: LossParams) -> tuple[str, ...]:
        """Label-free (the self-supervised setting allows it) when the triplet term is off."""
        return cls.inputs if params.triplet_weight > 0 else ("student", "teacher")

    def __init__(
        self,
        alpha: float = 3.0,
        beta: float = 3.0,
        list_length: int = 4,
        triplet_margin: float = 0.2,
        triplet_weight: float = 1.0,
    ):
        super().__init__()
        self.params = self.checked_params(alpha=alpha, beta=beta, list_length=list_length,
                                          triplet_margin=triplet_margin, triplet_weight=triplet_weight)

    def teacher_lists(self, teacher: Tensor) -> Tensor:
        """(n, list_length) indices of each row's nearest other rows, nearest first."""
        with torch.no_grad():
            distances = pairwise_distances(F.normalize(teacher, dim=1))
            distances.fill_diagonal_(float("inf"))
            return distances.topk(self.list_length, dim=1, largest=False).indices

    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor | None = None) -> Tensor:
        check_pair(student, teacher, min_rows=1)
        if labels is None and self.triplet_weight > 0:
            raise ValueError("labels are required when triplet_weight > 0 (pass labels or triplet_weight=0)")
        if labels is not None:
            check_labels("labels", labels, student.shape[0])
            labels = gather_batch(labels)
        student, teacher = gather_batch(student), gather_batch(teacher.detach())
        if len(student) <= self.list_length:
            raise ValueError(f"the (global) batch needs more than list_length={self.list_length} rows, got {len(student)}")
        student_unit = F.normalize(student, dim=1)
        scores = -self.alpha * pairwise_distances(student_unit).pow(self.beta)
        ranked_scores = scores.gather(1, self.teacher_lists(teacher))
        loss = -plackett_luce_log_likelihood(ranked_scores).mean()
        if self.triplet_weight > 0:
            loss = loss + self.triplet_weight * triplet_margin_loss(student_unit, labels, self.triplet_margin)
        return loss

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, beta={self.beta}, list_length={self.list_length}, "
            f"triplet_margin={self.triplet_margin}, triplet_weight={self.triplet_weight}"
        )
