"""Batched augmentations (kornia) that run on whatever device the batch lives on.

Augmenting the whole batch in the training process beat per-image torchvision transforms in
DataLoader workers on the 2-core CPU profile (workers compete with the trainer for cores) and keeps
the GPU path free of CPU decoding; see DESIGN.md. Each call draws fresh randomness from torch's
global generator, so two calls give two views and `torch.manual_seed` makes a run repeatable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import nn

from pipeline.data import AUGMENTATIONS as KINDS
from pipeline.data import TUNABLE_AUGMENTATIONS


class BatchAugmentation(nn.Module):
    """uint8 (or float in [0, 1]) batch -> float batch, augmented, resized to `image_size`, normalised.

    `canvas_crop` takes the place of the first op (a random resized crop of the whole batch shape) on a batch
    wider than high: the canvases of a file-based set (pipeline.data.files), which every in-memory set's
    square images are not.
    """

    def __init__(self, ops: Sequence[nn.Module], channels: int, mean: Sequence[float], std: Sequence[float],
                 canvas_crop: nn.Module | None = None):
        super().__init__()
        self.ops = nn.Sequential(*ops)
        self.canvas_crop = canvas_crop
        self.channels = channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != self.channels:
            raise ValueError(f"expected a batch (B, {self.channels}, H, W), got {tuple(images.shape)}")
        x = images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
        if self.canvas_crop is not None and x.shape[-1] > x.shape[-2]:
            x = self.ops[1:](self.canvas_crop(x))
        else:
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


# The value of a file-set canvas outside its image, in every channel (pipeline.data.files); no image pixel
# holds it, so the columns and rows holding anything else are the image's.
CANVAS_FILL = 255


def image_boxes(x: torch.Tensor) -> torch.Tensor:
    """(B, 4) long: left, top, width, height of the image on each canvas of a float batch in [0, 1] (where
    CANVAS_FILL is exactly 1.0)."""
    content = (x < CANVAS_FILL / 255).any(dim=1)  # (B, H, W)
    boxes = []
    for along in (content.any(dim=1), content.any(dim=2)):  # columns, rows
        first = along.int().argmax(dim=1)
        last = along.shape[1] - 1 - along.flip(1).int().argmax(dim=1)
        boxes.append((first, last - first + 1))
    (left, width), (top, height) = boxes
    return torch.stack([left, top, width, height], dim=1)


class CanvasResizedCrop(nn.Module):
    """RandomResizedCrop of each whole image, as torchvision's transform and the official metric-learning code
    apply it (``dataset/utils.py`` of Proxy-Anchor and LabelRelaxation), for a batch of canvases that hold
    images of different aspect ratios (pipeline.data.files).

    Each image's box is found from the canvas fill, and a crop is drawn in it as kornia's
    ``RandomResizedCrop`` draws one in a whole image (area fraction in `scale`, log-uniform aspect ratio in
    `ratio`, the first of ten tries that fits, else the centre crop of the ratio in range nearest the
    image's, as torchvision's ``get_params``), then cut and resized by kornia's ``crop_by_indices``, the op
    that ``RandomResizedCrop`` crops with.
    """

    def __init__(self, size: tuple[int, int], scale: tuple[float, float],
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        super().__init__()
        self.size, self.scale, self.ratio = size, scale, ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from kornia.geometry.transform import crop_by_indices

        left, top, width, height = self.sample(image_boxes(x)).unbind(1)
        right, bottom = left + width - 1, top + height - 1
        corners = torch.stack([torch.stack([left, top], 1), torch.stack([right, top], 1),
                               torch.stack([right, bottom], 1), torch.stack([left, bottom], 1)], dim=1)
        return crop_by_indices(x, corners.to(x.dtype), self.size, interpolation="bilinear", align_corners=True)

    def sample(self, boxes: torch.Tensor) -> torch.Tensor:
        """(B, 4) crops (left, top, width, height) inside `boxes`, from torch's global generator."""
        left, top, width, height = boxes.double().unbind(1)
        n, device = len(boxes), boxes.device
        area = width * height
        fraction = self.scale[0] + (self.scale[1] - self.scale[0]) * torch.rand(n, 10, device=device)
        target = area[:, None] * fraction
        low, high = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(low + (high - low) * torch.rand(n, 10, device=device, dtype=torch.float64))
        w = torch.sqrt(target * aspect).round()
        h = torch.sqrt(target / aspect).round()
        fits = (w > 0) & (w <= width[:, None]) & (h > 0) & (h <= height[:, None])
        first = fits.int().argmax(dim=1, keepdim=True)  # the first try that fits
        found = fits.any(dim=1)
        # No try fits: the whole image, cut to the nearest ratio in range (torchvision's get_params).
        image_ratio = width / height
        fallback_w = torch.where(image_ratio > self.ratio[1], (height * self.ratio[1]).round(), width)
        fallback_h = torch.where(image_ratio < self.ratio[0], (width / self.ratio[0]).round(), height)
        w = torch.where(found, w.gather(1, first)[:, 0], fallback_w).clamp(min=1).minimum(width)
        h = torch.where(found, h.gather(1, first)[:, 0], fallback_h).clamp(min=1).minimum(height)
        offset = torch.rand(n, 2, device=device, dtype=torch.float64)
        x0 = torch.where(found, (offset[:, 0] * (width - w + 1)).floor(), ((width - w) / 2).floor())
        y0 = torch.where(found, (offset[:, 1] * (height - h + 1)).floor(), ((height - h) / 2).floor())
        return torch.stack([left + x0, top + y0, w, h], dim=1).long()


@dataclass(frozen=True)
class ViewRecipe:
    """The strengths of one view generator, in the SimCLR paper's terms (Chen et al. 2020, Appendix A).

    - `crop_scale`: the random resized crop's area range;
    - `jitter_strength`: s, with brightness = contrast = saturation = 0.8 s and hue = 0.2 s, applied with
      `jitter_probability`;
    - `grayscale_probability`;
    - `blur_probability`: Gaussian blur (kernel 10% of the image side, sigma 0.1-2); None is the recipe's
      rule, 0.5 from 64 px up and none below (SimCLR blurs ImageNet, not CIFAR).
    """

    crop_scale: tuple[float, float]
    jitter_strength: float = 0.0
    jitter_probability: float = 0.8
    grayscale_probability: float = 0.0
    blur_probability: float | None = 0.0

    def jitter(self) -> tuple[float, float, float, float]:
        s = self.jitter_strength
        return (0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)

    def blur_at(self, image_size: int) -> float:
        if self.blur_probability is None:
            return 0.5 if image_size >= 64 else 0.0
        return self.blur_probability


# The recipes by name. simclr: the SimCLR paper's ImageNet recipe (s = 1; its CIFAR-10 runs use s = 0.5,
# set in profiles/cifar10_ssl.yaml); mocov2: MoCo v2's aug_plus (main_moco.py: crop scale 0.2-1, ColorJitter
# 0.4 / 0.4 / 0.4 / 0.1 = s 0.5, at p 0.8, grayscale 0.2, blur 0.5); metric: the Proxy-Anchor recipe,
# crop + flip only.
RECIPES = {
    "simclr": ViewRecipe(crop_scale=(0.08, 1.0), jitter_strength=1.0, grayscale_probability=0.2, blur_probability=None),
    "mocov2": ViewRecipe(crop_scale=(0.2, 1.0), jitter_strength=0.5, grayscale_probability=0.2, blur_probability=None),
    "metric": ViewRecipe(crop_scale=(0.08, 1.0)),
}
assert tuple(RECIPES) == TUNABLE_AUGMENTATIONS, "pipeline.data.TUNABLE_AUGMENTATIONS names the recipes here"
OVERRIDES = ("crop_scale", "jitter_strength", "grayscale_probability", "blur_probability")


def view_recipe(kind: str, **overrides) -> ViewRecipe:
    """The recipe `kind` with the strengths given (None: the recipe's own) in place of its defaults."""
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - set(OVERRIDES))
    if unknown:
        raise ValueError(f"unknown augmentation strength(s) {unknown}; allowed: {', '.join(OVERRIDES)}")
    if kind not in RECIPES:
        if given:
            raise ValueError(f"augmentation {kind!r} takes no strengths (only {', '.join(RECIPES)} do), got {sorted(given)}")
        return None
    if "crop_scale" in given:
        given["crop_scale"] = tuple(given["crop_scale"])
    return replace(RECIPES[kind], **given)


def _colour_ops(channels: int, recipe: ViewRecipe) -> list[nn.Module]:
    if recipe.jitter_strength == 0 and recipe.grayscale_probability == 0:
        return []
    import kornia.augmentation as K

    brightness, contrast, saturation, hue = recipe.jitter()
    if channels == 1:  # saturation, hue and grayscale mean nothing on one channel
        return [K.ColorJitter(brightness, contrast, 0.0, 0.0, p=recipe.jitter_probability)]
    return [K.ColorJitter(brightness, contrast, saturation, hue, p=recipe.jitter_probability),
            K.RandomGrayscale(p=recipe.grayscale_probability)]


def _blur(image_size: int, p: float) -> list[nn.Module]:
    """Gaussian blur with a kernel of ~10% of the image side (odd, at least 3), sigma 0.1-2, at probability p."""
    if p == 0:
        return []
    import kornia.augmentation as K

    kernel = max(3, int(0.1 * image_size) // 2 * 2 + 1)
    return [K.RandomGaussianBlur((kernel, kernel), (0.1, 2.0), p=p)]


def build_augmentation(
    kind: str,
    image_size: int,
    channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_scale: tuple[float, float] | None = None,
    jitter_strength: float | None = None,
    grayscale_probability: float | None = None,
    blur_probability: float | None = None,
) -> BatchAugmentation:
    """The view generator for a training recipe (`RECIPES` holds the strengths; arguments left None keep them).

    - simclr: random resized crop (scale 0.08-1), flip, colour jitter s = 1 at p 0.8, grayscale 0.2, blur 0.5
      from 64 px up
    - mocov2: crop (0.2-1), flip, jitter s = 0.5 at p 0.8, grayscale 0.2, blur 0.5 from 64 px up
    - metric: crop (0.08-1) + flip, the Proxy-Anchor recipe
    - cifar: zero-pad `image_size // 8` (4 px at 32, the classification-KD recipe of RepDistiller; 12 at
      STL-10's 96), random crop back to `image_size`, flip
    - none: centre crop to `image_size` when the batch is larger, then normalise (evaluation)
    """
    if kind not in KINDS:
        raise ValueError(f"unknown augmentation {kind!r}; choose one of {list(KINDS)}")
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean/std need {channels} entries, got {len(mean)}/{len(std)}")
    recipe = view_recipe(kind, crop_scale=crop_scale, jitter_strength=jitter_strength,
                         grayscale_probability=grayscale_probability, blur_probability=blur_probability)
    size = (image_size, image_size)
    if kind == "none":
        return BatchAugmentation([CenterCrop(size)], channels, mean, std)
    import kornia.augmentation as K  # deferred: 3-4 s of start-up that only training stages need

    if kind == "cifar":
        crop = K.RandomCrop(size, padding=max(1, image_size // 8))
        return BatchAugmentation([crop, K.RandomHorizontalFlip()], channels, mean, std)
    ops = [K.RandomResizedCrop(size, scale=recipe.crop_scale), K.RandomHorizontalFlip(),
           *_colour_ops(channels, recipe), *_blur(image_size, recipe.blur_at(image_size))]
    return BatchAugmentation(ops, channels, mean, std, canvas_crop=CanvasResizedCrop(size, recipe.crop_scale))
