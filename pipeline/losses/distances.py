"""Pairwise Euclidean distances with the exact conventions the batch-wise losses need."""

import torch
from torch import Tensor


def pairwise_distances(embeddings: Tensor, squared: bool = False, eps: float = 1e-12) -> Tensor:
    """(n, n) distances ||x_i - x_j|| (or squared), diagonal exactly 0 with zero gradient.

    Computed from the Gram matrix (O(n^2 d) time, O(n^2) memory, unlike the (n, n, d) difference
    tensor) after centring the batch: distances do not change, and centring removes the float
    cancellation that large offsets would otherwise cause.  Squared distances are clamped at `eps`
    before the square root so coincident off-diagonal points keep a finite gradient.  Runs in at least
    float32 with autocast off: half-precision distances are too coarse for these losses.
    """
    if embeddings.dtype in (torch.float16, torch.bfloat16):
        embeddings = embeddings.float()
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        centred = embeddings - embeddings.mean(dim=0, keepdim=True)
        squared_norms = centred.pow(2).sum(dim=1)
        gram = centred @ centred.T
        result = (squared_norms[:, None] + squared_norms[None, :] - 2 * gram).clamp_min(eps)
        if not squared:
            result = result.sqrt()
        diagonal = torch.eye(len(embeddings), dtype=torch.bool, device=embeddings.device)
        return result.masked_fill(diagonal, 0.0)


def off_diagonal(n: int, device: torch.device) -> Tensor:
    """Boolean (n, n) mask selecting the pairs i != j."""
    return ~torch.eye(n, dtype=torch.bool, device=device)
