"""CUB-200-2011, Cars-196 and Stanford Online Products with the metric-learning protocol.

Retrieval protocol (class-disjoint halves, as in Proxy-Anchor and the relaxed-contrastive paper):
CUB classes 1-100 train / 101-200 test, Cars 1-98 / 99-196, SOP `Ebay_train.txt` / `Ebay_test.txt`.
Labels are renumbered 0..C-1 inside each half. The classification protocol uses each dataset's own
image split over all classes (CUB `train_test_split.txt`, Cars the `test` flag of `cars_annos.mat`).
"""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline.data.errors import DatasetNotFoundError
from pipeline.data.imageset import FileImageSet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _find(root: str | Path | None, marker: str, subdirs: tuple[str, ...], name: str, how: str) -> Path:
    """The folder under `root` that holds `marker`, trying the archive's own top-level folder names."""
    base = Path(root or "data")
    for folder in [base, *(base / s for s in subdirs)]:
        if (folder / marker).exists():
            return folder
    raise DatasetNotFoundError(f"{name}: {marker} not found under {base} (tried {[str(base / s) for s in subdirs]}); {how}")


def _make(name: str, folder: Path, rel_paths: list[str], labels: list[int], split_classes: set[int]) -> FileImageSet:
    """Labels become ranks in `split_classes`, every class of this split in the archive (not only those
    selected), so train and test of the classification protocol number a class alike."""
    if not rel_paths:
        raise ValueError(f"{name}: no images selected under {folder}")
    classes = sorted(split_classes)
    lookup = {c: i for i, c in enumerate(classes)}
    return FileImageSet(
        name=name,
        paths=tuple(folder / p for p in rel_paths),
        labels=torch.tensor([lookup[c] for c in labels], dtype=torch.long),
        num_classes=len(classes),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


def _read_rows(path: Path, skip_header: bool = False) -> list[list[str]]:
    lines = path.read_text().splitlines()[1 if skip_header else 0:]
    return [line.split() for line in lines if line.strip()]


def load_cub200(split: str, root: str | Path | None = None, protocol: str = "retrieval") -> FileImageSet:
    """CUB-200-2011 from the unpacked `CUB_200_2011.tgz` (images.txt, image_class_labels.txt, images/)."""
    folder = _find(root, "images.txt", ("CUB_200_2011",), "cub200",
                   "download CUB_200_2011.tgz from the Caltech-UCSD site and unpack it under data.root")
    paths = {i: p for i, p in _read_rows(folder / "images.txt")}
    classes = {i: int(c) for i, c in _read_rows(folder / "image_class_labels.txt")}
    if protocol == "retrieval":
        keep = [i for i in paths if (classes[i] <= 100) == (split == "train")]
        split_classes = {classes[i] for i in keep}
    else:
        is_train = {i: f == "1" for i, f in _read_rows(folder / "train_test_split.txt")}
        keep = [i for i in paths if is_train[i] == (split == "train")]
        split_classes = set(classes.values())
    return _make("cub200", folder / "images", [paths[i] for i in keep], [classes[i] for i in keep], split_classes)


def load_cars196(split: str, root: str | Path | None = None, protocol: str = "retrieval") -> FileImageSet:
    """Cars-196 from `cars_annos.mat` + `car_ims/` (the all-in-one release used by metric learning)."""
    from scipy.io import loadmat

    folder = _find(root, "cars_annos.mat", ("cars196", "stanford_cars"), "cars196",
                   "download car_ims.tgz and cars_annos.mat from the Stanford Cars site and unpack them under data.root")
    annotations = loadmat(folder / "cars_annos.mat")["annotations"][0]
    rel_paths, labels, all_labels = [], [], set()
    for record in annotations:
        label = int(record["class"].squeeze())
        all_labels.add(label)
        if protocol == "retrieval":
            wanted = (label <= 98) == (split == "train")
        else:
            wanted = (int(record["test"].squeeze()) == 0) == (split == "train")
        if wanted:
            rel_paths.append(str(record["relative_im_path"].squeeze()))
            labels.append(label)
    split_classes = set(labels) if protocol == "retrieval" else all_labels
    return _make("cars196", folder, rel_paths, labels, split_classes)


def load_sop(split: str, root: str | Path | None = None, protocol: str = "retrieval") -> FileImageSet:
    """Stanford Online Products from `Ebay_train.txt` / `Ebay_test.txt` (header, then id class super path)."""
    if protocol != "retrieval":
        raise ValueError("sop: only the retrieval protocol exists (Ebay_train/Ebay_test); set data.protocol: retrieval")
    folder = _find(root, "Ebay_train.txt", ("Stanford_Online_Products",), "sop",
                   "download Stanford_Online_Products.zip and unpack it under data.root")
    rows = _read_rows(folder / ("Ebay_train.txt" if split == "train" else "Ebay_test.txt"), skip_header=True)
    labels = [int(r[1]) for r in rows]
    return _make("sop", folder, [r[3] for r in rows], labels, set(labels))
