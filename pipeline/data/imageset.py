"""The two shapes a dataset takes here: decoded uint8 tensors in memory, or a list of image files."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch


@dataclass(frozen=True)
class ImageSet:
    """A small dataset held in memory as uint8 (N, C, H, W), so batches are sliced, not decoded.

    `mean` / `std` are per-channel statistics in [0, 1] units, used by the augmentations to normalise.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"{self.name}: images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.name}: {self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"{self.name}: mean/std must have one entry per channel ({self.channels})")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def rows(self, indices: torch.Tensor) -> "ImageSet":
        """The images at `indices`, labels and statistics kept (the statistics stay the whole set's)."""
        return replace(self, images=self.images[indices], labels=self.labels[indices])

    def unlabelled(self) -> "ImageSet":
        """The same images with every label 0 and one class: what a setting without labels trains on, so no
        loss, sampler or choice can read a class (`Setting.labels`)."""
        return replace(self, labels=torch.zeros_like(self.labels), num_classes=1)

    def subsample(self, count: int | None, seed: int) -> "ImageSet":
        """A seeded random subset in the set's order, all of it when `count` is None or not smaller (the probe
        on 10k of 60k train images costs seconds instead of a minute)."""
        if count is None or count >= len(self):
            return self
        keep = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:count].sort().values
        return self.rows(keep)


@dataclass(frozen=True)
class FileImageSet:
    """A large dataset kept as file paths; decoding happens in DataLoader workers (see `files.py`)."""

    name: str
    paths: tuple[Path, ...]
    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int = 3

    def __post_init__(self) -> None:
        if self.labels.shape != (len(self.paths),):
            raise ValueError(f"{self.name}: {len(self.paths)} files but labels of shape {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return len(self.paths)

    def unlabelled(self) -> "FileImageSet":
        """As `ImageSet.unlabelled`."""
        return replace(self, labels=torch.zeros_like(self.labels), num_classes=1)


def subset_classes(dataset: ImageSet | FileImageSet, classes: Sequence[int], relabel: bool = True) -> ImageSet | FileImageSet:
    """Keep only `classes` (e.g. Fashion-MNIST 5-9 for retrieval on classes a teacher never saw).

    With `relabel`, labels become 0..len(classes)-1 in the order given, so losses with one proxy per class work.
    """
    classes = [int(c) for c in classes]
    unknown = [c for c in classes if not 0 <= c < dataset.num_classes]
    if unknown:
        raise ValueError(f"{dataset.name}: classes {unknown} out of range 0..{dataset.num_classes - 1}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"{dataset.name}: duplicate classes in {classes}")
    wanted = torch.tensor(classes, dtype=torch.long)
    keep = torch.isin(dataset.labels, wanted)
    labels = dataset.labels[keep]
    if relabel:
        lookup = torch.full((dataset.num_classes,), -1, dtype=torch.long)
        lookup[wanted] = torch.arange(len(classes))
        labels = lookup[labels]
    num_classes = len(classes) if relabel else dataset.num_classes
    if isinstance(dataset, ImageSet):
        return replace(dataset, images=dataset.images[keep], labels=labels, num_classes=num_classes)
    paths = tuple(p for p, k in zip(dataset.paths, keep.tolist()) if k)
    return replace(dataset, paths=paths, labels=labels, num_classes=num_classes)
