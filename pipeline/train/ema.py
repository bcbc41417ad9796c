"""The momentum (EMA) teacher of Self-Taught Metric Learning (Kim et al., CVPR 2022): after each backward
pass and before the optimiser step, as the official `main.py` calls its `Momentum_Update`, every float entry
of the teacher's state (parameters and BatchNorm running statistics) moves to m * teacher + (1 - m) *
student, and BatchNorm's batch counters are copied. Hand-written: lightly's `update_momentum` moves
parameters only, where STML moves the whole state.
"""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def momentum_update(student: nn.Module, teacher: nn.Module, momentum: float) -> None:
    """Move `teacher`'s state towards `student`'s (the same architecture, entries matched by name)."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    source = student.state_dict()
    for name, value in teacher.state_dict().items():
        if name not in source:
            raise KeyError(f"the teacher's {name} has no counterpart in the student")
        if name.endswith("num_batches_tracked") or not value.is_floating_point():
            value.copy_(source[name])
        else:
            value.mul_(momentum).add_(source[name].detach(), alpha=1.0 - momentum)
