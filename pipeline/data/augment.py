"""Batched augmentations (kornia) that run on whatever device the batch lives on.

Augmenting the whole batch in the training process beat per-image torchvision transforms in
DataLoader workers on the 2-core CPU profile (workers compete with the trainer for cores) and keeps
the GPU path free of CPU decoding; see DESIGN.md. Each call draws fresh randomness from torch's
global generator, so two calls give two views and `torch.manual_seed` makes a run repeatable.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from pipeline.data import AUGMENTATIONS as KINDS


class BatchAugmentation(nn.Module):
    """uint8 (or float in [0, 1]) batch -> float batch, augmented, resized to `image_size`, normalised."""

    def __init__(self, ops: Sequence[nn.Module], channels: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.ops = nn.Sequential(*ops)
        self.channels = channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != self.channels:
            raise ValueError(f"expected a batch (B, {self.channels}, H, W), got {tuple(images.shape)}")
        x = images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
        x = self.ops(x)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


class CenterCrop(nn.Module):
    """The central `size` window, by slicing (start = (H - h) // 2), as kornia's `CenterCrop` does in its
    default slice mode; here so that evaluation, which needs nothing else of kornia, skips its 3-4 s
    import (tests/test_data_augment.py compares the two)."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (h, w), (height, width) = self.size, x.shape[-2:]
        if h > height or w > width:
            raise ValueError(f"cannot centre-crop {height}x{width} images to {h}x{w}")
        top, left = (height - h) // 2, (width - w) // 2
        return x[..., top: top + h, left: left + w]


def _colour_ops(channels: int, strength: tuple[float, float, float, float], p_jitter: float, p_gray: float) -> list[nn.Module]:
    import kornia.augmentation as K

    brightness, contrast, saturation, hue = strength
    if channels == 1:  # saturation, hue and grayscale mean nothing on one channel
        return [K.ColorJitter(brightness, contrast, 0.0, 0.0, p=p_jitter)]
    return [K.ColorJitter(brightness, contrast, saturation, hue, p=p_jitter), K.RandomGrayscale(p=p_gray)]


def _blur(image_size: int, p: float) -> list[nn.Module]:
    """Gaussian blur with a kernel of ~10% of the image, only from 64 px up (SimCLR skips it on CIFAR)."""
    if image_size < 64:
        return []
    import kornia.augmentation as K

    kernel = int(0.1 * image_size) // 2 * 2 + 1
    return [K.RandomGaussianBlur((kernel, kernel), (0.1, 2.0), p=p)]


def build_augmentation(
    kind: str,
    image_size: int,
    channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_scale: tuple[float, float] | None = None,
) -> BatchAugmentation:
    """The view generator for a training recipe.

    - simclr: random resized crop (scale 0.08-1), flip, colour jitter 0.8/0.8/0.8/0.2 at p 0.8, grayscale 0.2, blur 0.5
    - mocov2: crop (0.2-1), flip, jitter 0.4/0.4/0.4/0.1 at p 0.8, grayscale 0.2, blur 0.5
    - metric: crop (0.08-1) + flip, the Proxy-Anchor recipe
    - cifar: zero-pad `image_size // 8` (4 px at 32, the classification-KD recipe of RepDistiller; 12 at
      STL-10's 96), random crop back to `image_size`, flip
    - none: centre crop to `image_size` when the batch is larger, then normalise (evaluation)
    """
    if kind not in KINDS:
        raise ValueError(f"unknown augmentation {kind!r}; choose one of {list(KINDS)}")
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean/std need {channels} entries, got {len(mean)}/{len(std)}")
    size = (image_size, image_size)
    if kind == "none":
        return BatchAugmentation([CenterCrop(size)], channels, mean, std)
    import kornia.augmentation as K  # deferred: 3-4 s of start-up that only training stages need

    if kind == "cifar":
        crop = K.RandomCrop(size, padding=max(1, image_size // 8))
        return BatchAugmentation([crop, K.RandomHorizontalFlip()], channels, mean, std)
    default_scale = {"simclr": (0.08, 1.0), "mocov2": (0.2, 1.0), "metric": (0.08, 1.0)}[kind]
    crop = K.RandomResizedCrop(size, scale=crop_scale or default_scale)
    flip = K.RandomHorizontalFlip()
    if kind == "metric":
        return BatchAugmentation([crop, flip], channels, mean, std)
    jitter = (0.8, 0.8, 0.8, 0.2) if kind == "simclr" else (0.4, 0.4, 0.4, 0.1)
    ops = [crop, flip, *_colour_ops(channels, jitter, 0.8, 0.2), *_blur(image_size, 0.5)]
    return BatchAugmentation(ops, channels, mean, std)
