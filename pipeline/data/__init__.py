"""Dataset registry: one name per dataset, each loader returning an `ImageSet` or a `FileImageSet`.

`load_dataset(name, split, root)` is the single entry point the stages use; names are the ones
`params.yaml` accepts (`DATASETS`).
"""
from __future__ import annotations

from difflib import get_close_matches
from pathlib import Path
from typing import Callable

from pipeline.data.errors import DatasetNotFoundError
from pipeline.data.imageset import FileImageSet, ImageSet, subset_classes
from pipeline.data.metric_sets import load_cars196, load_cub200, load_sop
from pipeline.data.small_sets import (
    load_cifar10,
    load_cifar100,
    load_digits,
    load_fashion_mnist,
    load_stl10,
)

IN_MEMORY: dict[str, Callable[..., ImageSet]] = {
    "digits": load_digits,
    "fashion_mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "stl10": load_stl10,
}
FILE_BASED: dict[str, Callable[..., FileImageSet]] = {
    "cub200": load_cub200,
    "cars196": load_cars196,
    "sop": load_sop,
}
DATASETS: tuple[str, ...] = (*IN_MEMORY, *FILE_BASED)
SPLITS = ("train", "test")


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
        return IN_MEMORY[name](split, root=root, download=download)
    return FILE_BASED[name](split, root=root, protocol=protocol)


__all__ = [
    "DATASETS",
    "DatasetNotFoundError",
    "FileImageSet",
    "ImageSet",
    "load_dataset",
    "subset_classes",
]
