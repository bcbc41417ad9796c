"""Decoding of file-based datasets in DataLoader workers into fixed-size uint8 tensors.

Workers only decode and resize (the expensive, per-image part); random augmentation happens on the
whole batch on the training device (`augment.py`), so the two views of an image share one decode.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as F

from pipeline.data.imageset import FileImageSet, ImageSet


class DecodedImages(Dataset):
    """Each item: the image resized (shorter side) and centre-cropped to `load_size`, uint8 (3, S, S), and its label."""

    def __init__(self, dataset: FileImageSet, load_size: int = 256):
        self.dataset = dataset
        self.load_size = load_size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.dataset.paths[index]
        try:
            image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
        except RuntimeError as err:
            raise ValueError(f"{self.dataset.name}: cannot decode image {path}: {err}") from err
        image = F.resize(image, self.load_size, antialias=True)
        image = F.center_crop(image, [self.load_size, self.load_size])
        return image, int(self.dataset.labels[index])


def decoded_loader(
    dataset: FileImageSet,
    load_size: int,
    batch_size: int | None = None,
    batch_sampler: Sampler | None = None,
    shuffle: bool = False,
    workers: int = 4,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader of uint8 batches; pass `batch_sampler` for class-balanced (P x K) batches."""
    generator = torch.Generator().manual_seed(seed)
    common = dict(num_workers=workers, pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)
    if batch_sampler is not None:
        return DataLoader(DecodedImages(dataset, load_size), batch_sampler=batch_sampler, **common)
    return DataLoader(DecodedImages(dataset, load_size), batch_size=batch_size, shuffle=shuffle,
                      generator=generator, drop_last=shuffle, **common)


def materialize(dataset: FileImageSet, load_size: int, workers: int = 4, batch_size: int = 256) -> ImageSet:
    """Decode a file dataset once into an in-memory `ImageSet` at `load_size` (uint8, (N, 3, S, S)).

    At 256 px this is 1.2 GB for CUB's 6k training images and 11.8 GB for SOP's 60k: affordable on a
    GPU host, and it lets every recipe share the in-memory training loop with random crops on device.
    """
    loader = decoded_loader(dataset, load_size, batch_size=batch_size, workers=workers)
    images = torch.empty((len(dataset), 3, load_size, load_size), dtype=torch.uint8)
    cursor = 0
    for batch, _ in loader:
        images[cursor: cursor + len(batch)] = batch
        cursor += len(batch)
    return ImageSet(dataset.name, images, dataset.labels.clone(), dataset.num_classes, dataset.mean, dataset.std)
