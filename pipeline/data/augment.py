"""Batched augmentations that run on whatever device the batch lives on.

Augmenting the whole batch in the training process beat per-image torchvision transforms in
DataLoader workers on the 2-core CPU profile (workers compete with the trainer for cores) and keeps
the GPU path free of CPU decoding; see DESIGN.md. Each op acts on the whole batch in a constant number of
kernels and draws its parameters on the batch's device, with no host synchronisation: kornia's flip,
grayscale and colour functions where they do that, our own ops where kornia's did not (each says why).
Each call draws fresh randomness from torch's generators, so two calls give two views and
`torch.manual_seed` makes a run repeatable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.data import AUGMENTATIONS as KINDS
from pipeline.data import TUNABLE_AUGMENTATIONS


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
        return (self.ops(x) - self.mean.to(x.device)) / self.std.to(x.device)


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


class RandomResizedCrop(nn.Module):
    """torchvision's RandomResizedCrop for a whole batch: a box per image drawn as ``get_params`` draws it,
    then every box cut and resized by one bilinear resampling (``affine_grid`` + ``grid_sample``).

    Written here, not kornia's ``RandomResizedCrop``: in its default slice mode that resizes each image on its
    own (256 ``upsample_bilinear2d`` calls at batch 256; 1,022 per SimCLR step at batch 512 on the H200,
    shared/gpu/PROFILE.md) and its parameter draw syncs the host. Corners map to corners (``align_corners``),
    as kornia's ``crop_by_indices`` maps them, so every sample lies inside its box.

    On a batch wider than high, the canvases of a file-based set (pipeline.data.files) that hold images of
    different aspect ratios, each box is drawn inside the image found from the canvas fill, as the official
    metric-learning code crops each whole image (``dataset/utils.py`` of Proxy-Anchor and LabelRelaxation).
    """

    def __init__(self, size: tuple[int, int], scale: tuple[float, float],
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        super().__init__()
        self.size, self.scale, self.ratio = size, scale, ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        if width > height:
            boxes = image_boxes(x)
        else:  # filled on the device: torch.tensor(..., device=cuda) copies from the host and waits for the queue
            boxes = torch.zeros(n, 4, dtype=torch.long, device=x.device)
            boxes[:, 2], boxes[:, 3] = width, height
        left, top, w, h = self.sample(boxes).to(x.dtype).unbind(1)
        # Output pixel j samples left + j (w - 1) / (size - 1), in grid_sample's [-1, 1] coordinates.
        theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
        theta[:, 0, 0] = (w - 1) / max(width - 1, 1)
        theta[:, 0, 2] = (2 * left + w - 1) / max(width - 1, 1) - 1
        theta[:, 1, 1] = (h - 1) / max(height - 1, 1)
        theta[:, 1, 2] = (2 * top + h - 1) / max(height - 1, 1) - 1
        grid = F.affine_grid(theta, [n, x.shape[1], *self.size], align_corners=True)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)

    def sample(self, boxes: torch.Tensor) -> torch.Tensor:
        """(B, 4) crops (left, top, width, height) inside `boxes`, from the generator of their device."""
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


def _applied(p: float, n: int, device: torch.device) -> torch.Tensor:
    """(n, 1, 1, 1) bool: which images an op with probability `p` changes, drawn on `device`."""
    return (torch.rand(n, device=device) < p).view(n, 1, 1, 1)


class ColorJitter(nn.Module):
    """torchvision's ColorJitter at probability `p`: brightness, contrast and saturation factors uniform in
    [max(0, 1 - s), 1 + s], a hue shift uniform in [-hue, hue] turns, by kornia's colour functions (those of
    its ColorJitter), the four applied in one random order per batch, as kornia's ColorJitter orders them.

    Written here, not kornia's ``ColorJitter``: that checks each factor with ``.any()`` and reads its random
    order with ``.tolist()``, 4 host syncs per call (profiled at batch 256). Here the factors are drawn on the
    batch's device, the order on the host's generator, every adjustment runs on every image, and the images
    left unjittered are put back with ``torch.where``.
    """

    def __init__(self, brightness: float, contrast: float, saturation: float, hue: float, p: float) -> None:
        super().__init__()
        self.strengths = (brightness, contrast, saturation, hue)
        # The adjustments with a non-zero strength, each with the range its factor is drawn from.
        self.ranges = {name: (-s, s) if name == "hue" else (max(0.0, 1 - s), 1 + s)
                       for name, s in zip(("brightness", "contrast", "saturation", "hue"), self.strengths) if s > 0}
        self.p = p

    def sample(self, n: int, device: torch.device) -> dict[str, torch.Tensor]:
        """The factors of `n` images (on `device`), which images change, and the order (host)."""
        factors = {name: low + (high - low) * torch.rand(n, device=device) for name, (low, high) in self.ranges.items()}
        names = list(self.ranges)
        return {**factors, "applied": _applied(self.p, n, device),
                "order": [names[i] for i in torch.randperm(len(names)).tolist()]}

    def apply(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        from kornia.enhance import (adjust_brightness_accumulative, adjust_contrast_with_mean_subtraction,
                                    adjust_hue, adjust_saturation_with_gray_subtraction)

        adjust = {"brightness": adjust_brightness_accumulative, "contrast": adjust_contrast_with_mean_subtraction,
                  "saturation": adjust_saturation_with_gray_subtraction,
                  "hue": lambda image, turns: adjust_hue(image, turns * 2 * math.pi)}
        jittered = x.clamp(0, 1)
        for name in params["order"]:
            jittered = adjust[name](jittered, params[name]).clamp(0, 1)
        return torch.where(params["applied"], jittered, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(x, self.sample(len(x), x.device))


class GaussianBlur(nn.Module):
    """Gaussian blur at probability `p` with sigma uniform in `sigma` per image (both axes), reflected
    borders, as kornia's ``RandomGaussianBlur``: kornia's kernels and separable filter (one grouped
    convolution per axis for the whole batch). Written here because kornia's op, through ``gaussian_blur2d``,
    reads sigma back to check that it is positive: one host sync per call (profiled); here it is by
    construction."""

    def __init__(self, kernel: int, sigma: tuple[float, float], p: float) -> None:
        super().__init__()
        self.kernel, self.sigma, self.p = kernel, sigma, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from kornia.filters import filter2d_separable, get_gaussian_kernel1d

        n = len(x)
        sigma = self.sigma[0] + (self.sigma[1] - self.sigma[0]) * torch.rand(n, 1, device=x.device)
        kernel = get_gaussian_kernel1d(self.kernel, sigma)
        blurred = filter2d_separable(x, kernel, kernel, border_type="reflect")
        return torch.where(_applied(self.p, n, x.device), blurred, x)


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
        return [ColorJitter(brightness, contrast, 0.0, 0.0, p=recipe.jitter_probability)]
    return [ColorJitter(brightness, contrast, saturation, hue, p=recipe.jitter_probability),
            K.RandomGrayscale(p=recipe.grayscale_probability)]


def _blur(image_size: int, p: float) -> list[nn.Module]:
    """Gaussian blur with a kernel of ~10% of the image side (odd, at least 3), sigma 0.1-2, at probability p."""
    if p == 0:
        return []
    kernel = max(3, int(0.1 * image_size) // 2 * 2 + 1)
    return [GaussianBlur(kernel, (0.1, 2.0), p=p)]


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
    ops = [RandomResizedCrop(size, scale=recipe.crop_scale), K.RandomHorizontalFlip(),
           *_colour_ops(channels, recipe), *_blur(image_size, recipe.blur_at(image_size))]
    return BatchAugmentation(ops, channels, mean, std)
