"""FitNets hints (Romero et al., ICLR 2015): 1x1-conv regressors from student to teacher stages."""

from collections.abc import Sequence

from torch import Tensor, nn

from pipeline.losses.contract import Loss
from pipeline.losses.feature_maps import check_stages, resize_like
from pipeline.losses.validation import check_positive


class FitNetLoss(Loss):
    """`loss(student_maps, teacher_maps)` = sum over stages of mean((W_k * s_k - t_k)^2).

    One bias-free 1x1 conv per stage maps student channels to teacher channels, initialised
    uniform(-0.005, 0.005) as in the label-relaxation code; its parameters belong in the optimiser.
    (n, c) vectors are treated as 1x1 maps.  The paper adds a Proxy-Anchor term in training.
    """

    features = "stage_maps"
    proxy_anchor = True
    runtime_args = ("student_channels", "teacher_channels")

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int]):
        super().__init__()
        self.params = self.checked_params()
        if len(student_channels) != len(teacher_channels) or not student_channels:
            raise ValueError(
                "student_channels and teacher_channels must be non-empty and of equal length, "
                f"got {list(student_channels)} and {list(teacher_channels)}"
            )
        for channels in (*student_channels, *teacher_channels):
            check_positive("channel count", channels)
        self.regressors = nn.ModuleList(
            nn.Conv2d(s, t, kernel_size=1, bias=False) for s, t in zip(student_channels, teacher_channels)
        )
        for regressor in self.regressors:
            nn.init.uniform_(regressor.weight, -0.005, 0.005)

    def forward(self, student: Sequence[Tensor], teacher: Sequence[Tensor]) -> Tensor:
        check_stages(student, teacher, expected=len(self.regressors))
        total = 0.0
        for regressor, s, t in zip(self.regressors, student, teacher):
            if s.dim() == 2:
                s, t = s[:, :, None, None], t[:, :, None, None]
            if s.shape[1] != regressor.in_channels or t.shape[1] != regressor.out_channels:
                raise ValueError(
                    f"regressor {regressor.in_channels}->{regressor.out_channels} channels got student "
                    f"{tuple(s.shape)} and teacher {tuple(t.shape)}"
                )
            total = total + (resize_like(regressor(s), t) - t.detach()).pow(2).mean()
        return total
