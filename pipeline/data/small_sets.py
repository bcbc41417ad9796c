"""Datasets small enough to hold decoded in memory: digits, Fashion-MNIST, CIFAR-10/100, STL-10."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from pipeline.data.errors import DatasetNotFoundError
from pipeline.data.idx import read_idx
from pipeline.data.imageset import ImageSet

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def load_digits(split: str, root: str | Path | None = None, download: bool = False) -> ImageSet:
    """scikit-learn's 8x8 digits (1,797 images), split 70/30 stratified with a fixed seed.

    The split is fixed (seed 0) so every stage and test sees the same train and test images.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    pixels = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    index = np.arange(len(pixels))
    train_idx, test_idx = train_test_split(index, test_size=0.3, stratify=bunch.target, random_state=0)
    chosen = np.sort(train_idx if split == "train" else test_idx)
    return ImageSet(
        name="digits",
        images=torch.from_numpy(pixels[chosen].copy()),
        labels=torch.from_numpy(bunch.target[chosen].astype(np.int64)),
        num_classes=10,
        mean=(0.3056,),
        std=(0.3760,),
    )


def _fashion_mnist_candidates(root: str | Path | None) -> list[Path]:
    """Where the IDX files may lie, in order of preference: `root` layouts, FASHION_MNIST_DIR, Debian's folder."""
    candidates = []
    if root is not None:
        candidates += [Path(root), Path(root) / "fashion-mnist", Path(root) / "FashionMNIST" / "raw"]
    if env := os.environ.get("FASHION_MNIST_DIR"):
        candidates.append(Path(env))
    return candidates + [FASHION_MNIST_SYSTEM_DIR]


def _fashion_mnist_dir(root: str | Path | None) -> Path | None:
    """The first folder that holds the four IDX files, gzipped or not."""
    for folder in _fashion_mnist_candidates(root):
        names = [n for pair in _FASHION_FILES.values() for n in pair]
        if all((folder / n).exists() or (folder / f"{n}.gz").exists() for n in names):
            return folder
    return None


def load_fashion_mnist(split: str, root: str | Path | None = None, download: bool = False) -> ImageSet:
    """Fashion-MNIST 60k/10k from Debian's `dataset-fashion-mnist` files, `root`, or a torchvision download."""
    folder = _fashion_mnist_dir(root)
    if folder is None and download:
        from torchvision.datasets import FashionMNIST

        target = Path(root or "data")
        FashionMNIST(str(target), train=True, download=True)
        FashionMNIST(str(target), train=False, download=True)
        folder = _fashion_mnist_dir(target)
    if folder is None:
        raise DatasetNotFoundError(
            f"fashion_mnist: IDX files not found in {[str(p) for p in _fashion_mnist_candidates(root)]}; "
            "install them with `apt-get install dataset-fashion-mnist`, or set FASHION_MNIST_DIR, "
            "or set data.download: true where the network allows"
        )
    image_name, label_name = _FASHION_FILES[split]

    def pick(name: str) -> Path:
        plain = folder / name
        return plain if plain.exists() else folder / f"{name}.gz"

    images = read_idx(pick(image_name))
    labels = read_idx(pick(label_name))
    expected = 60000 if split == "train" else 10000
    if images.shape != (expected, 28, 28):
        raise ValueError(f"fashion_mnist {split}: {pick(image_name)} holds images of shape {images.shape}, "
                         f"expected ({expected}, 28, 28)")
    if labels.shape != (expected,):
        raise ValueError(f"fashion_mnist {split}: {pick(label_name)} holds {labels.shape[0] if labels.ndim else 0} "
                         f"labels, expected {expected}")
    if labels.size and labels.max() >= 10:
        raise ValueError(f"fashion_mnist {split}: {pick(label_name)} holds label {int(labels.max())}, "
                         "outside the 10 classes (0..9)")
    return ImageSet(
        name="fashion_mnist",
        images=torch.from_numpy(images.copy())[:, None],
        labels=torch.from_numpy(labels.astype(np.int64)),
        num_classes=10,
        mean=(0.2860,),
        std=(0.3530,),
    )


def _torchvision_set(cls_name: str, split: str, root: str | Path | None, download: bool):
    from torchvision import datasets

    cls = getattr(datasets, cls_name)
    target = str(root or "data")
    kwargs = {"split": split} if cls_name == "STL10" else {"train": split == "train"}
    try:
        return cls(target, download=download, **kwargs)
    except RuntimeError as err:  # torchvision raises RuntimeError("Dataset not found ...")
        raise DatasetNotFoundError(
            f"{cls_name} not found under {target}: {err}. Set data.download: true where the network allows, "
            f"or unpack the official archive under {target}"
        ) from err


def load_cifar10(split: str, root: str | Path | None = None, download: bool = False) -> ImageSet:
    data = _torchvision_set("CIFAR10", split, root, download)
    return ImageSet("cifar10", torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous(),
                    torch.tensor(data.targets, dtype=torch.long), 10,
                    (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def load_cifar100(split: str, root: str | Path | None = None, download: bool = False) -> ImageSet:
    data = _torchvision_set("CIFAR100", split, root, download)
    return ImageSet("cifar100", torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous(),
                    torch.tensor(data.targets, dtype=torch.long), 100,
                    (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


def load_stl10(split: str, root: str | Path | None = None, download: bool = False) -> ImageSet:
    """STL-10; `split` is torchvision's: train, test, unlabeled or train+unlabeled (label -1 when unlabeled)."""
    data = _torchvision_set("STL10", split, root, download)
    return ImageSet("stl10", torch.from_numpy(data.data), torch.from_numpy(data.labels.astype(np.int64)), 10,
                    (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713))
