"""Learning-rate factors for ``LambdaLR``: linear warm-up, then cosine decay or step decay at milestones."""

from __future__ import annotations

import math


class WarmupCosine:
    """A callable for ``LambdaLR``; a class (not a closure) so the scheduler's state dict holds only
    numbers and loads with ``weights_only=True``."""

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupMultiStep:
    """Linear warm-up, then the factor is multiplied by ``gamma`` at each milestone step (RepDistiller's
    recipe: x0.1 at epochs 150, 180, 210). A class for the same ``weights_only`` reason as above."""

    def __init__(self, warmup_steps: int, milestones: tuple[int, ...], gamma: float = 0.1) -> None:
        if list(milestones) != sorted(milestones) or any(m < 1 for m in milestones):
            raise ValueError(f"milestones must be increasing positive steps, got {milestones}")
        self.warmup_steps = warmup_steps
        self.milestones = tuple(int(m) for m in milestones)
        self.gamma = gamma

    def __call__(self, step: int) -> float:
        warm = (step + 1) / self.warmup_steps if step < self.warmup_steps else 1.0
        return warm * self.gamma ** sum(step >= m for m in self.milestones)
