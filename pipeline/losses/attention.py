"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017)."""

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from pipeline.losses.contract import Loss
from pipeline.losses.feature_maps import check_stages, resize_like


def attention_map(maps: Tensor, size_of: Tensor | None = None) -> Tensor:
    """(n, h*w) L2-normalised channel mean of squared activations, optionally resized first."""
    energy = maps.pow(2).mean(dim=1, keepdim=True)
    if size_of is not None:
        energy = resize_like(energy, size_of)
    return F.normalize(energy.flatten(1), dim=1)


class AttentionTransferLoss(Loss):
    """`loss(student_maps, teacher_maps)` = sum over stages of mean((a(s_k) - a(t_k))^2), with
    a() the normalised squared-activation map.  Channel counts may differ; a student map at another
    resolution is resized (bilinear) to the teacher's before normalising.  The paper adds a
    Proxy-Anchor term in training.
    """

    features = "stage_maps"
    proxy_anchor = True

    def __init__(self) -> None:
        super().__init__()
        self.params = self.checked_params()

    def forward(self, student: Sequence[Tensor], teacher: Sequence[Tensor]) -> Tensor:
        check_stages(student, teacher)
        if any(s.dim() != 4 for s in student):
            raise ValueError("attention transfer needs (n, c, h, w) feature maps")
        total = 0.0
        for s, t in zip(student, teacher):
            teacher_attention = attention_map(t.detach())
            total = total + (attention_map(s, size_of=t) - teacher_attention).pow(2).mean()
        return total
