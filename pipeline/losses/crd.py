"""Contrastive Representation Distillation (Tian et al., ICLR 2020), NCE form with memory banks,
following the official RepDistiller code that the label-relaxation paper reused (its code/CRD_loss.py)."""

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from pipeline.distributed import gather_batch, mean_over_ranks
from pipeline.losses.contract import Loss, LossParams, Range
from pipeline.losses.validation import PositiveFloat, PositiveInt, check_in_range, check_pair, check_positive


class L2Head(nn.Module):
    """Linear projection followed by L2 normalisation (CRD's `Embed`)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, features: Tensor) -> Tensor:
        return F.normalize(self.linear(features.flatten(1)), dim=1)


# Score the whole bank by matmul (`CRDLoss._scores`) while it holds at most this many times the K + 1
# candidates of a row: the measured crossover with the gather lies between 60x and 300x.
DENSE_SCORING_MAX_RATIO = 64


def nce_loss(scores: Tensor, n_data: int, eps: float = 1e-7) -> Tensor:
    """CRD's Eq. 18: column 0 holds the positive's score, the rest the negatives' (noise = uniform)."""
    noise = (scores.shape[1] - 1) / n_data
    log_positive = torch.log(scores[:, 0] / (scores[:, 0] + noise + eps))
    log_negative = torch.log(noise / (scores[:, 1:] + noise + eps))
    return -(log_positive.sum() + log_negative.sum()) / scores.shape[0]


class CRDLoss(Loss):
    """`loss(student, teacher, index[, contrast_index])` with `index` the dataset indices of the rows.

    The rows are pooled backbone features (`features = "pooled"`), not embeddings: the label-relaxation
    code feeds CRD the last pooling layer's output of both networks (`t_feats[-1]`, `s_feats[-1]` in
    code/train_target.py, with `t_dim` / `s_dim` the backbones' `num_ftrs`), as RepDistiller feeds it the
    penultimate features (helper/loops.py).  Both sides get a 128-d linear + L2 head (trainable: put
    `loss.parameters()` in the optimiser).  Each memory bank holds one momentum-averaged embedding per
    training sample; each row is contrasted with its own bank entry and `num_negatives` entries of the
    other side's bank (`negatives`).
    The banks are updated in training mode only (`eval()` freezes them), and the normalising constants
    Z are estimated once, on the first batch, as in the official code.  Banks and Z are buffers, so
    they are checkpointed with `state_dict()`.  Under DDP every rank applies the whole global batch's
    updates and Z is averaged over ranks, so the banks stay identical on every rank (a rank updating
    only its own rows would leave the others' entries stale); each rank draws its own negatives.  The
    paper adds a Proxy-Anchor term in training.
    """

    inputs = ("student", "teacher", "indices")
    features = "pooled"
    proxy_anchor = True
    runtime_args = ("student_dim", "teacher_dim", "n_data", "dataset_labels")

    class Params(LossParams):
        feat_dim: PositiveInt = 128
        num_negatives: PositiveInt = 4096
        temperature: PositiveFloat = 0.07
        momentum: Annotated[float, Field(ge=0, lt=1)] = 0.5

    # The NCE temperature, RepDistiller's 0.07, from 0.02 to 0.5 (its weight is the Proxy-Anchor weight's ratio).
    search_space = {"temperature": Range(0.02, 0.5)}

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        n_data: int,
        dataset_labels: Tensor | None = None,
        feat_dim: int = 128,
        num_negatives: int = 4096,
        temperature: float = 0.07,
        momentum: float = 0.5,
    ):
        super().__init__()
        for name, value in (("student_dim", student_dim), ("teacher_dim", teacher_dim), ("n_data", n_data)):
            check_positive(name, value)
        self.params = self.checked_params(feat_dim=feat_dim, num_negatives=num_negatives, temperature=temperature,
                                          momentum=momentum)
        self.n_data = n_data
        self.score_every_entry = n_data <= DENSE_SCORING_MAX_RATIO * (num_negatives + 1)
        self.student_head = L2Head(student_dim, feat_dim)
        self.teacher_head = L2Head(teacher_dim, feat_dim)
        bound = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("student_memory", torch.empty(n_data, feat_dim).uniform_(-bound, bound))
        self.register_buffer("teacher_memory", torch.empty(n_data, feat_dim).uniform_(-bound, bound))
        self.register_buffer("normalizers", torch.full((2,), -1.0))  # Z for student / teacher anchors
        self._index_classes(dataset_labels)

    def _index_classes(self, dataset_labels: Tensor | None) -> None:
        """Items sorted by class with each class's block (start, size), for `negatives`.  Not checkpointed:
        the stage supplies the labels again on resume."""
        if dataset_labels is None:
            for name in ("dataset_labels", "by_class", "class_start", "class_count"):
                self.register_buffer(name, None, persistent=False)
            return
        integer = not (dataset_labels.is_floating_point() or dataset_labels.dtype == torch.bool)
        if dataset_labels.shape != (self.n_data,) or not integer:
            raise ValueError(f"dataset_labels must be an integer tensor of shape ({self.n_data},), "
                             f"got {dataset_labels.dtype} {tuple(dataset_labels.shape)}")
        if dataset_labels.min() < 0 or dataset_labels.unique().numel() < 2:
            raise ValueError("dataset_labels must be >= 0 and hold at least two classes "
                             "(the negatives are other-class items)")
        labels = dataset_labels.long()
        counts = torch.bincount(labels)
        self.register_buffer("dataset_labels", labels, persistent=False)
        self.register_buffer("by_class", torch.argsort(labels, stable=True), persistent=False)
        self.register_buffer("class_start", torch.cumsum(counts, 0) - counts, persistent=False)
        self.register_buffer("class_count", counts, persistent=False)

    def negatives(self, index: Tensor) -> Tensor:
        """(n, num_negatives) dataset indices drawn with replacement.  With labels, uniformly from the items
        whose class differs from row i's, as the official datasets sample (`cls_negative`: LabelRelaxation
        code/dataset/cub.py, cars.py, SOP.py, drawn with replacement in base.py; RepDistiller
        dataset/cifar100.py); without labels (the self-supervised setting), uniformly from all items, as
        RepDistiller's ContrastMemory draws when given no contrast indices (crd/memory.py)."""
        shape = (index.shape[0], self.num_negatives)
        if self.dataset_labels is None:
            return torch.randint(0, self.n_data, shape, device=index.device)
        row_class = self.dataset_labels[index]
        start, count = self.class_start[row_class, None], self.class_count[row_class, None]
        # A uniform position among the n_data - count outside the row's class block of `by_class`
        # (the modulo's bias is below 2^-40 for any data set that fits in memory).
        draw = torch.randint(0, 2**62, shape, device=index.device) % (self.n_data - count)
        return self.by_class[draw + count * (draw >= start)]

    def forward(
        self, student: Tensor, teacher: Tensor, index: Tensor, contrast_index: Tensor | None = None
    ) -> Tensor:
        check_pair(student.flatten(1), teacher.flatten(1), min_rows=1)
        n = student.shape[0]
        if index.shape != (n,) or index.is_floating_point():
            raise ValueError(f"index must be an integer tensor of shape ({n},), got {tuple(index.shape)}")
        check_in_range("index", index, 0, self.n_data)
        if contrast_index is None:
            contrast_index = self.negatives(index)
        elif contrast_index.shape != (n, self.num_negatives):
            raise ValueError(f"contrast_index must have shape ({n}, {self.num_negatives}), got {tuple(contrast_index.shape)}")
        student_emb = self.student_head(student)
        teacher_emb = self.teacher_head(teacher.detach())
        candidates = torch.cat([index[:, None], contrast_index], dim=1)  # positive first
        student_scores = self._scores(self.teacher_memory, candidates, student_emb, 0)
        teacher_scores = self._scores(self.student_memory, candidates, teacher_emb, 1)
        loss = nce_loss(student_scores, self.n_data) + nce_loss(teacher_scores, self.n_data)
        if self.training:
            index = gather_batch(index)
            self._update(self.student_memory, index, gather_batch(student_emb.detach()))
            self._update(self.teacher_memory, index, gather_batch(teacher_emb.detach()))
        return loss

    def _scores(self, memory: Tensor, candidates: Tensor, anchors: Tensor, slot: int) -> Tensor:
        """exp(<bank entry, anchor> / T) / Z for each candidate; Z fixed from the first batch.

        The official code gathers the (n, K+1, feat) candidate rows and contracts them with the anchors,
        memory-bound work.  While the bank is at most `DENSE_SCORING_MAX_RATIO` times the candidates,
        scoring every bank entry with one matmul and picking the candidates' columns gives the same
        numbers far faster (written by hand; on a 2-core CPU, K = 4096: 5.4-6.5x at a 60k bank for
        n = 180-1024 in benchmarks/losses.py; in a stand-alone timing at n = 256, 11x at 30k, 1.5x at
        240k and 0.3x at 1.28M, hence the switch)."""
        if self.score_every_entry:  # a copy: backward needs the bank as it was, and `_update` writes in place
            bank = memory.detach().to(anchors.dtype, copy=True)
            logits = torch.gather(anchors @ bank.T, 1, candidates)
        else:
            bank = memory[candidates].detach().to(anchors.dtype)  # (n, K+1, feat)
            logits = torch.einsum("nkf,nf->nk", bank, anchors)
        scores = torch.exp(logits / self.temperature)
        # Z from the first batch (the buffer starts negative), chosen on the device: no host sync per step.
        first = mean_over_ranks(scores.detach().mean()) * self.n_data
        self.normalizers[slot] = torch.where(self.normalizers[slot] < 0, first, self.normalizers[slot])
        return scores / self.normalizers[slot].clone().to(scores.dtype)  # clone: the buffer changes in place

    @torch.no_grad()
    def _update(self, memory: Tensor, index: Tensor, embeddings: Tensor) -> None:
        """Momentum update of the bank rows of `index`. A batch can hold an item twice (two views of one
        image, a class-balanced sampler's repeat): the last occurrence is written, as a serial loop
        would. Written by hand because `memory[index] = ...` with repeated indices lets threads (and GPU
        blocks) race for the row, so two runs of one stage trained different CRD students."""
        position = torch.arange(index.numel(), device=index.device)
        last = torch.full((self.n_data,), -1, dtype=position.dtype, device=index.device)
        last = last.scatter_reduce(0, index, position, reduce="amax")  # a max: the same in any order
        keep = position[last[index] == position]
        mixed = memory[index[keep]] * self.momentum + embeddings[keep].detach().to(memory.dtype) * (1 - self.momentum)
        memory[index[keep]] = F.normalize(mixed, dim=1)
