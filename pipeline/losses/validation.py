"""Argument checks shared by the losses: bad input fails with an error naming it, before compute."""

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

# Field types of the losses' `Params` models (pipeline.losses.contract).
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
PositiveInt = Annotated[int, Field(gt=0)]


def check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def check_embeddings(name: str, embeddings: Tensor, min_rows: int = 2) -> None:
    """A batch of embeddings: 2-D, floating point, at least `min_rows` rows."""
    if embeddings.dim() != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {tuple(embeddings.shape)}")
    if not embeddings.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {embeddings.dtype}")
    if embeddings.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {embeddings.shape[0]}")


def check_same_rows(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same number of rows, got {a.shape[0]} and {b.shape[0]}"
        )


def check_labels(name: str, labels: Tensor, rows: int) -> None:
    if labels.dim() != 1 or labels.shape[0] != rows:
        raise ValueError(f"{name} must have shape ({rows},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"{name} must be an integer tensor, got {labels.dtype}")


def check_in_range(name: str, values: Tensor, low: int, high: int) -> None:
    """Every entry in [low, high), asserted on the values' device without the host waiting for it
    (``torch._assert_async``), so that a training step never syncs for a check; a RuntimeError naming `name`."""
    torch._assert_async(((values >= low) & (values < high)).all(), f"{name} must lie in [{low}, {high})")


def check_pair(student: Tensor, teacher: Tensor, min_rows: int = 2) -> None:
    """The usual `loss(student, teacher)` pair: two 2-D batches of the same length."""
    check_embeddings("student", student, min_rows)
    check_embeddings("teacher", teacher, min_rows)
    check_same_rows("student", student, "teacher", teacher)
