"""Triplet margin loss over all valid triplets, averaged over the violating ones.

Hand-written because pytorch-metric-learning is only a test dependency here; it reproduces that
library's TripletMarginLoss(margin) + TripletMarginMiner as the label-relaxation code used them for
DarkRank (Euclidean distance, mean over triplets with non-zero loss), and is tested against it.
"""

import torch
from torch import Tensor

from pipeline.losses.distances import pairwise_distances

_CHUNK_ELEMENTS = 1 << 22  # bound the (anchors, n, n) block: ~16 MB of float32 per chunk


def triplet_margin_loss(embeddings: Tensor, labels: Tensor, margin: float) -> Tensor:
    """mean over {(a, p, q): y_a = y_p, a != p, y_q != y_a, loss > 0} of relu(d_ap - d_aq + margin)."""
    n = len(embeddings)
    distances = pairwise_distances(embeddings)
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(n, dtype=torch.bool, device=same.device)
    negative = ~same
    total = distances.new_zeros(())
    violating = torch.zeros((), dtype=torch.long, device=distances.device)
    step = max(1, _CHUNK_ELEMENTS // (n * n))
    for start in range(0, n, step):
        rows = slice(start, start + step)
        hinge = torch.relu(distances[rows, :, None] - distances[rows, None, :] + margin)
        hinge = hinge.masked_fill(~(positive[rows, :, None] & negative[rows, None, :]), 0.0)
        total = total + hinge.sum()
        violating = violating + (hinge > 0).sum()
    return total / violating.clamp_min(1)
