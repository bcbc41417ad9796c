"""Embedding head of the original metric-learning code, and the SSL projection heads (lightly's)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

POOLINGS = ("avg", "max", "avg+max")


def global_pool(feature_map: torch.Tensor, pooling: str = "avg+max") -> torch.Tensor:
    """(N, C, H, W) -> (N, C). ``avg+max`` sums global average and global max pooling, as the
    Proxy-Anchor / relaxed-contrastive code does."""
    if pooling == "avg":
        return feature_map.mean(dim=(2, 3))
    if pooling == "max":
        return feature_map.amax(dim=(2, 3))
    if pooling == "avg+max":
        return feature_map.mean(dim=(2, 3)) + feature_map.amax(dim=(2, 3))
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


class EmbeddingHead(nn.Module):
    """Linear map of pooled features to ``embedding_dim``, orthogonal init and zero bias as in the
    relaxed-contrastive reference code; optionally L2-normalised."""

    def __init__(self, in_features: int, embedding_dim: int, normalize: bool = False) -> None:
        super().__init__()
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        self.linear = nn.Linear(in_features, embedding_dim)
        nn.init.orthogonal_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.normalize = normalize

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        embedding = self.linear(pooled)
        return F.normalize(embedding, dim=1) if self.normalize else embedding


PROJECTIONS = ("simclr", "mocov2")


def build_projection_head(kind: str, in_features: int, output_dim: int = 128, hidden_dim: int | None = None):
    """lightly's SimCLR head (2 layers, BatchNorm) or MoCo v2 head (2 layers, no BatchNorm)."""
    from lightly.models.modules.heads import MoCoProjectionHead, SimCLRProjectionHead  # only models that have one

    hidden_dim = hidden_dim or in_features
    if kind == "simclr":
        return SimCLRProjectionHead(in_features, hidden_dim, output_dim)
    if kind == "mocov2":
        return MoCoProjectionHead(in_features, hidden_dim, output_dim)
    raise ValueError(f"projection must be one of {PROJECTIONS} or None, got {kind!r}")
