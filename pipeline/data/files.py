"""Decoding of file-based datasets in DataLoader workers into fixed-size uint8 canvases.

Workers only decode and resize (the expensive, per-image part); random augmentation happens on the
whole batch on the training device (`augment.py`), so the two views of an image share one decode.

The official metric-learning code (Proxy-Anchor and LabelRelaxation, ``dataset/utils.py``) trains on
``RandomResizedCrop(224)`` of the whole image and evaluates ``Resize(256)`` + ``CenterCrop(224)``. Images
of every aspect ratio must batch, so each is stored resized to a shorter side of ``load_size``, centred on
a canvas ``load_size`` high and ``CANVAS_ASPECT`` x ``load_size`` wide whose other columns hold
``CANVAS_FILL``; no image pixel holds that value (decoded pixels are capped one below it), so the training
crop finds each image's columns in the batch (``augment.WholeImageResizedCrop``), while the evaluation's
centre crop of the canvas is the official centre crop of the image. What does not fit is centre-cropped:
portrait images lose rows beyond a square, landscape ones columns beyond ``CANVAS_ASPECT`` (landscape images
up to 3:2 are stored whole); the canvas costs ``CANVAS_ASPECT`` x the memory of a square.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as F

from pipeline.data.augment import CANVAS_FILL
from pipeline.data.imageset import FileImageSet, ImageSet

CANVAS_ASPECT = 1.5  # canvas width / height: 3:2 images are stored whole


def canvas_width(load_size: int) -> int:
    return round(CANVAS_ASPECT * load_size)


def on_canvas(image: torch.Tensor, load_size: int) -> torch.Tensor:
    """uint8 (3, h, w) -> (3, load_size, canvas_width(load_size)): resized to a shorter side of `load_size`,
    centre-cropped to the canvas where it is larger, capped below CANVAS_FILL, centred on CANVAS_FILL."""
    width = canvas_width(load_size)
    image = F.resize(image, load_size, antialias=True)
    image = F.center_crop(image, [load_size, min(width, image.shape[-1])]).clamp(max=CANVAS_FILL - 1)
    canvas = torch.full((image.shape[0], load_size, width), CANVAS_FILL, dtype=torch.uint8)
    left = (width - image.shape[-1]) // 2
    canvas[:, :, left: left + image.shape[-1]] = image
    return canvas


class DecodedImages(Dataset):
    """Each item: the image on its canvas (`on_canvas`), uint8 (3, S, CANVAS_ASPECT x S), and its label."""

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
        return on_canvas(image, self.load_size), int(self.dataset.labels[index])


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
    """Decode a file dataset once into an in-memory `ImageSet` of canvases at `load_size` (uint8,
    (N, 3, S, CANVAS_ASPECT x S)).

    At 256 px this is 1.7 GB for CUB's 6k training images and 17.6 GB for SOP's 60k: affordable on a
    GPU host, and it lets every recipe share the in-memory training loop with random crops on device.
    """
    loader = decoded_loader(dataset, load_size, batch_size=batch_size, workers=workers)
    images = torch.empty((len(dataset), 3, load_size, canvas_width(load_size)), dtype=torch.uint8)
    cursor = 0
    for batch, _ in loader:
        images[cursor: cursor + len(batch)] = batch
        cursor += len(batch)
    return ImageSet(dataset.name, images, dataset.labels.clone(), dataset.num_classes, dataset.mean, dataset.std)
