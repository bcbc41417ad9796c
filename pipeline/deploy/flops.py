"""Parameters and floating-point operations per image of a model, with torch's own counter
(`torch.utils.flop_counter.FlopCounterMode`: 2 FLOPs per multiply-add of convolutions and matrix products)."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def flops_per_image(model: nn.Module, image: torch.Tensor) -> int:
    """FLOPs of one forward pass on one image (a batch of one, (1, C, H, W))."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model.eval()(image)
    return int(counter.get_total_flops())
