"""NT-Xent, the SimCLR teacher loss: lightly's implementation with cross-rank negatives."""

from lightly.loss import NTXentLoss as _LightlyNTXent
from torch import Tensor

from pipeline.losses.contract import Loss, LossParams
from pipeline.losses.validation import PositiveFloat, check_embeddings, check_same_rows


class NTXentLoss(Loss):
    """`loss(view0, view1)`: projections of two augmentations of the same images, row-aligned.

    Wraps `lightly.loss.NTXentLoss`.  Under torch.distributed each rank scores its own rows against
    the all-gathered negatives; the rank losses average to the global-batch loss and, with lightly's
    gather summing gradients, DDP's averaging reproduces the single-process gradient.
    """

    role = "teacher"
    inputs = ()  # two views of the student's own projections: loss(view0, view1)

    class Params(LossParams):
        temperature: PositiveFloat = 0.5

    def __init__(self, temperature: float = 0.5):
        super().__init__()
        self.params = self.checked_params(temperature=temperature)
        self.criterion = _LightlyNTXent(temperature=temperature, gather_distributed=True)

    def forward(self, view0: Tensor, view1: Tensor) -> Tensor:
        check_embeddings("view0", view0, min_rows=1)
        check_embeddings("view1", view1, min_rows=1)
        check_same_rows("view0", view0, "view1", view1)
        return self.criterion(view0, view1)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
