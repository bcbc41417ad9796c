"""Input checks shared by the evaluation functions, so every bad input fails before compute with a message
that names the argument and the problem (a NaN embedding otherwise turns into a silently wrong metric)."""

from __future__ import annotations

import torch
from torch import Tensor

DISTANCES = ("euclidean", "cosine")


def check_distance(distance: str) -> None:
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")


def check_embeddings_and_labels(embeddings: Tensor, labels: Tensor, *, name: str = "embeddings") -> None:
    """A 2-D finite float matrix with one integer label per row."""
    if not isinstance(embeddings, Tensor) or not isinstance(labels, Tensor):
        raise ValueError(
            f"{name} and its labels must be torch tensors, got {type(embeddings).__name__} "
            f"and {type(labels).__name__}"
        )
    if embeddings.ndim != 2:
        raise ValueError(f"{name} must be 2-D (items x dimensions), got shape {tuple(embeddings.shape)}")
    if embeddings.shape[0] == 0 or embeddings.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(embeddings.shape)})")
    if not embeddings.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {embeddings.dtype}")
    if labels.ndim != 1:
        raise ValueError(f"labels for {name} must be 1-D, got shape {tuple(labels.shape)}")
    if labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"{name} has {embeddings.shape[0]} rows but its labels have {labels.shape[0]} entries"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels for {name} must be an integer tensor, got {labels.dtype}")
    finite = torch.isfinite(embeddings).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten()
        raise ValueError(
            f"{name} contains NaN or infinite values in {bad.numel()} row(s), first at row {int(bad[0])}"
        )
