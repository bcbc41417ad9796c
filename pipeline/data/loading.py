"""From the `data` section of params.yaml to images in memory: what every stage loads, one way."""
from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.data import FileImageSet, ImageSet, load_dataset, subset_classes

if TYPE_CHECKING:
    from pipeline.config import DataConfig, Params


def load_images(data: DataConfig, split: str, classes: tuple[int, ...] | None = None) -> ImageSet:
    """One split in memory as uint8; file datasets are decoded once at `load_size` (crops happen on device)."""
    dataset = load_dataset(data.name, split, root=data.root, download=data.download, protocol=data.protocol)
    if isinstance(dataset, FileImageSet):
        from pipeline.data.files import materialize  # deferred: torchvision's image decoding, 1.5-2 s to import

        dataset = materialize(dataset, data.load_size or data.image_size, workers=data.workers)
    if classes is not None:
        dataset = subset_classes(dataset, classes)
    return dataset


def evaluation_classes(params: Params, teacher: str | None) -> tuple[int, ...] | None:
    """Classes a model is evaluated on: those its teacher never saw in training (metric setting), else all."""
    if teacher is None or params.teachers[teacher].train_classes is None:
        return None
    total = load_dataset(params.data.name, "test", root=params.data.root, protocol=params.data.protocol).num_classes
    return unseen_classes(params.teachers[teacher].train_classes, total)


def unseen_classes(train_classes: tuple[int, ...], num_classes: int) -> tuple[int, ...]:
    """The classes of a set of `num_classes` that a teacher trained on `train_classes` never saw."""
    seen = set(train_classes)
    return tuple(c for c in range(num_classes) if c not in seen)
