"""Triplet margin loss over all valid triplets, averaged over the violating ones.

Hand-written because pytorch-metric-learning is only a test dependency here; it reproduces that
library's TripletMarginLoss(margin) + TripletMarginMiner as the label-relaxation code used them for
DarkRank (Euclidean distance, mean over triplets with non-zero loss), and is tested against it.
"""

import torch
from torch import Tensor

from pipeline.losses.distances import pairwise_distances


def triplet_margin_loss(embeddings: Tensor, labels: Tensor, margin: float) -> Tensor:
    """mean over {(a, p, q): y_a = y_p, a != p, y_q != y_a, loss > 0} of relu(d_ap - d_aq + margin).

    Without materialising the n^3 triplets (16 GB of graph at n = 1024): for an anchor a and positive
    p, the negatives that violate are those with d_aq < d_ap + margin, so with each anchor's negative
    distances sorted, a binary search gives their count c and a cumulative sum their total S, and
    sum_q relu(d_ap - d_aq + margin) = c (d_ap + margin) - S.  O(n^2 log n) time, O(n^2) memory.
    """
    n = len(embeddings)
    distances = pairwise_distances(embeddings)
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(n, dtype=torch.bool, device=same.device)
    sorted_negatives = distances.masked_fill(same, float("inf")).sort(dim=1).values
    prefix_sums = torch.cat(
        [distances.new_zeros(n, 1), sorted_negatives.masked_fill(sorted_negatives.isinf(), 0.0).cumsum(dim=1)], dim=1
    )
    thresholds = distances + margin
    counts = torch.searchsorted(sorted_negatives.detach().contiguous(), thresholds.detach().contiguous())
    hinge_sums = counts * thresholds - prefix_sums.gather(1, counts)
    violating = counts[positive].sum()
    return hinge_sums[positive].sum() / violating.clamp_min(1)
