"""Proxy-Anchor loss (Kim et al., CVPR 2020): the supervised metric-learning teacher loss, and the
label term the paper adds to FitNet, attention transfer and CRD students."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.losses.contract import Loss, LossParams
from pipeline.losses.validation import (NonNegativeFloat, PositiveFloat, check_embeddings, check_in_range, check_labels,
                                        check_positive)


def _log1p_sum_exp(logits: Tensor, keep: Tensor) -> Tensor:
    """Per column log(1 + sum over kept rows of exp(logits)), computed stably."""
    masked = logits.masked_fill(~keep, float("-inf"))
    zeros = logits.new_zeros(1, logits.shape[1])
    return torch.logsumexp(torch.cat([zeros, masked], dim=0), dim=0)


class ProxyAnchorLoss(Loss):
    """`loss(embeddings, labels)`; one learnable proxy per class in `self.proxies`.

    pos = mean over classes present in the batch of log(1 + sum_{x in class} exp(-alpha (cos - margin)))
    neg = mean over all classes of log(1 + sum_{x not in class} exp(alpha (cos + margin))).
    The proxies want a `LR_MULTIPLIER` times higher learning rate than the network (100x in the
    official code, for the teacher and for the term beside FitNet / Attention / CRD students:
    Proxy-Anchor-CVPR2020 code/train.py and LabelRelaxation-CVPR21 code/train_target.py, both
    `'lr': float(args.lr) * 100`): give `loss.parameters()` their own optimiser parameter group.
    """

    LR_MULTIPLIER = 100.0

    role = "teacher"
    inputs = ("student", "labels")
    runtime_args = ("num_classes", "embedding_dim")

    class Params(LossParams):
        margin: NonNegativeFloat = 0.1
        alpha: PositiveFloat = 32.0

    def __init__(self, num_classes: int, embedding_dim: int, margin: float = 0.1, alpha: float = 32.0):
        super().__init__()
        check_positive("num_classes", num_classes)
        check_positive("embedding_dim", embedding_dim)
        self.params = self.checked_params(margin=margin, alpha=alpha)
        self.num_classes = num_classes
        self.proxies = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        check_embeddings("embeddings", embeddings, min_rows=1)
        check_labels("labels", labels, embeddings.shape[0])
        if embeddings.shape[1] != self.proxies.shape[1]:
            raise ValueError(f"embeddings have {embeddings.shape[1]} dims, proxies {self.proxies.shape[1]}")
        check_in_range("labels", labels, 0, self.num_classes)
        cos = F.normalize(embeddings, dim=1) @ F.normalize(self.proxies, dim=1).T  # (n, classes)
        # One-hot by comparison: F.one_hot reads the labels back to check their range (a host sync per step).
        positive = labels[:, None] == torch.arange(self.num_classes, device=labels.device)
        present = positive.any(dim=0)
        pos_term = _log1p_sum_exp(-self.alpha * (cos - self.margin), positive)[present].sum() / present.sum()
        neg_term = _log1p_sum_exp(self.alpha * (cos + self.margin), ~positive).sum() / self.num_classes
        return pos_term + neg_term

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, margin={self.margin}, alpha={self.alpha}"
