"""Classic knowledge distillation (Hinton et al., 2015) for classification students."""

import torch.nn.functional as F
from torch import Tensor

from pipeline.losses.contract import Loss, LossParams, Range
from pipeline.losses.validation import PositiveFloat, check_pair


class HintonKDLoss(Loss):
    """`loss(student_logits, teacher_logits)` = T^2 * KL(softmax(t/T) || softmax(s/T)), batch mean.
    The T^2 factor keeps gradient magnitudes comparable across temperatures."""

    features = "logits"

    class Params(LossParams):
        temperature: PositiveFloat = 4.0

    # Hinton et al.'s soft-target temperature, RepDistiller's 4, from 1 to 16.
    search_space = {"temperature": Range(1.0, 16.0)}

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        self.params = self.checked_params(temperature=temperature)

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        check_pair(student, teacher, min_rows=1)
        if student.shape[1] != teacher.shape[1]:
            raise ValueError(f"student and teacher logits need the same classes, got {student.shape[1]} and {teacher.shape[1]}")
        t = self.temperature
        return (t * t) * F.kl_div(
            F.log_softmax(student / t, dim=1),
            F.log_softmax(teacher.detach() / t, dim=1),
            reduction="batchmean",
            log_target=True,
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
