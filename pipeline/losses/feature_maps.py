"""Checks and resizing shared by the feature-map losses (FitNet, attention transfer)."""

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor


def check_stages(student: Sequence[Tensor], teacher: Sequence[Tensor], expected: int | None = None) -> None:
    if len(student) != len(teacher):
        raise ValueError(f"student and teacher must give the same number of stages, got {len(student)} and {len(teacher)}")
    if expected is not None and len(student) != expected:
        raise ValueError(f"expected {expected} stages (one per regressor), got {len(student)}")
    if len(student) == 0:
        raise ValueError("student and teacher feature lists are empty")
    for stage, (s, t) in enumerate(zip(student, teacher)):
        if s.dim() not in (2, 4) or t.dim() != s.dim():
            raise ValueError(
                f"stage {stage}: student and teacher maps must both be (n, c, h, w) or (n, c), "
                f"got {tuple(s.shape)} and {tuple(t.shape)}"
            )
        if s.shape[0] != t.shape[0]:
            raise ValueError(f"stage {stage}: batch sizes differ, {s.shape[0]} and {t.shape[0]}")


def resize_like(maps: Tensor, reference: Tensor) -> Tensor:
    """Bilinearly resize (n, c, h, w) `maps` to `reference`'s spatial size (no-op when they match),
    so students whose stages run at another resolution than the teacher's can still be compared."""
    if maps.shape[-2:] == reference.shape[-2:]:
        return maps
    return F.interpolate(maps, size=reference.shape[-2:], mode="bilinear", align_corners=False)
