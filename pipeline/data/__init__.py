"""Dataset registry: one name per dataset, each loader returning an `ImageSet` or a `FileImageSet`.

`load_dataset(name, split, root)` is the single entry point the stages use; names are the ones
`params.yaml` accepts (`DATASETS`).
"""
from __future__ import annotations

import importlib
from difflib import get_close_matches
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pipeline.data.errors import DatasetNotFoundError

if TYPE_CHECKING:
    from pipeline.data.imageset import FileImageSet, ImageSet

# name -> loader ("module:function", imported when the dataset is loaded, so validating params.yaml
# imports no loader and no torch); tests may put a callable in its place.
IN_MEMORY: dict[str, str | Callable[..., ImageSet]] = {
    "digits": "pipeline.data.small_sets:load_digits",
    "fashion_mnist": "pipeline.data.small_sets:load_fashion_mnist",
    "cifar10": "pipeline.data.small_sets:load_cifar10",
    "cifar100": "pipeline.data.small_sets:load_cifar100",
    "stl10": "pipeline.data.small_sets:load_stl10",
}
FILE_BASED: dict[str, str | Callable[..., FileImageSet]] = {
    "cub200": "pipeline.data.metric_sets:load_cub200",
    "cars196": "pipeline.data.metric_sets:load_cars196",
    "sop": "pipeline.data.metric_sets:load_sop",
}
DATASETS: tuple[str, ...] = (*IN_MEMORY, *FILE_BASED)
# The view generators of pipeline.data.augment, named here so the schema needs neither torch nor kornia.
AUGMENTATIONS: tuple[str, ...] = ("simclr", "mocov2", "metric", "cifar", "none")
# Those with strengths params.yaml may set (crop scale, jitter strength, grayscale and blur probability).
TUNABLE_AUGMENTATIONS: tuple[str, ...] = ("simclr", "mocov2", "metric")
SPLITS = ("train", "test")
# Label -> name where the dataset defines names figures can show (CUB, Cars and SOP have hundreds to
# thousands of classes: figures number them).
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "digits": tuple(str(d) for d in range(10)),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "stl10": ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"),
}


def class_names(name: str, classes: tuple[int, ...] | None = None) -> tuple[str, ...] | None:
    """Names of dataset `name`'s labels, or of `classes` in that order (a subset relabelled 0..n-1, as
    `subset_classes` relabels it); None where the dataset has no names here."""
    names = CLASS_NAMES.get(name)
    if names is None or classes is None:
        return names
    return tuple(names[c] for c in classes)


def load_dataset(
    name: str,
    split: str,
    root: str | Path | None = None,
    download: bool = False,
    protocol: str = "retrieval",
) -> ImageSet | FileImageSet:
    """Load `split` ("train" or "test"; STL-10 also takes its own split names) of dataset `name`.

    `protocol` matters only for CUB/Cars/SOP: "retrieval" gives the class-disjoint halves,
    "classification" the image split over all classes.
    """
    if name not in DATASETS:
        hint = get_close_matches(name, DATASETS, n=1)
        raise ValueError(f"unknown dataset {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                         + f"; choose one of {list(DATASETS)}")
    stl_splits = ("unlabeled", "train+unlabeled")
    if split not in SPLITS and not (name == "stl10" and split in stl_splits):
        raise ValueError(f"unknown split {split!r} for {name}; choose one of {list(SPLITS)}")
    if protocol not in ("retrieval", "classification"):
        raise ValueError(f"unknown protocol {protocol!r}; choose 'retrieval' or 'classification'")
    if name in IN_MEMORY:
        return _loader(IN_MEMORY[name])(split, root=root, download=download)
    return _loader(FILE_BASED[name])(split, root=root, protocol=protocol)


def _loader(entry: str | Callable) -> Callable:
    if callable(entry):
        return entry
    module, _, function = entry.partition(":")
    return getattr(importlib.import_module(module), function)


def __getattr__(name: str) -> Any:
    """`ImageSet`, `FileImageSet` and `subset_classes` on first use (they import torch)."""
    if name in ("ImageSet", "FileImageSet", "subset_classes"):
        from pipeline.data import imageset

        return getattr(imageset, name)
    raise AttributeError(f"module 'pipeline.data' has no attribute {name!r}")


__all__ = [
    "AUGMENTATIONS",
    "TUNABLE_AUGMENTATIONS",
    "DATASETS",
    "DatasetNotFoundError",
    "FileImageSet",
    "ImageSet",
    "load_dataset",
    "subset_classes",
]
