"""Tiny stand-ins for the CUB-200-2011, Cars-196 and SOP archives, laid out exactly like the unpacked originals.

Each builder writes real (tiny) JPEGs and the original index files, and returns the list of images it
wrote as `(relative path from the archive folder, original 1-based class id)`, so tests can compute the
expected splits on their own instead of trusting the loader.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.io import write_jpeg

CUB_CLASSES = 200
CARS_CLASSES = 196
SOP_SUPER_CLASSES = ("bicycle", "cabinet", "chair", "coffee_maker", "fan", "kettle",
                     "lamp", "mug", "sofa", "stapler", "table", "toaster")


def class_colour(class_id: int) -> tuple[int, int, int]:
    """A flat colour per class, so a decoded pixel says which class its file belongs to."""
    return (class_id * 37 % 256, class_id * 91 % 256, class_id * 53 % 256)


def write_image(path: Path, class_id: int, height: int = 12, width: int = 16, grayscale: bool = False) -> None:
    """A small flat-colour JPEG (non-square, like the real photos); grayscale ones exist in CUB too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = class_colour(class_id)
    if grayscale:
        image = torch.full((1, height, width), colour[0], dtype=torch.uint8)
    else:
        image = torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1).expand(3, height, width).contiguous()
    write_jpeg(image, str(path), quality=95)


def images_in_class(class_id: int) -> int:
    """1-3 images per class, uneven so that split sizes cannot come out right by accident."""
    return 1 + class_id % 3


def build_cub(root: Path) -> list[tuple[str, int, bool]]:
    """`root/CUB_200_2011/{images.txt, image_class_labels.txt, train_test_split.txt, classes.txt, images/}`.

    Returns (path relative to images/, class id 1..200, is_training_image) per image, in images.txt order.
    """
    folder = root / "CUB_200_2011"
    entries = []
    for class_id in range(1, CUB_CLASSES + 1):
        class_dir = f"{class_id:03d}.Bird_{class_id}"
        for n in range(images_in_class(class_id)):
            entries.append((f"{class_dir}/Bird_{class_id}_{n:04d}_{1000 + n}.jpg", class_id, n % 2 == 0))
    for i, (rel, class_id, _) in enumerate(entries):
        write_image(folder / "images" / rel, class_id, grayscale=i == 0)
    numbered = list(enumerate(entries, start=1))
    (folder / "images.txt").write_text("".join(f"{i} {rel}\n" for i, (rel, _, _) in numbered))
    (folder / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, (_, c, _) in numbered))
    (folder / "train_test_split.txt").write_text("".join(f"{i} {int(t)}\n" for i, (_, _, t) in numbered))
    (folder / "classes.txt").write_text("".join(f"{c} {c:03d}.Bird_{c}\n" for c in range(1, CUB_CLASSES + 1)))
    return entries


def build_cars(root: Path) -> list[tuple[str, int, bool]]:
    """`root/cars_annos.mat` + `root/car_ims/000001.jpg ...`, the all-in-one release.

    `annotations` is a 1 x N struct array with the real fields (relative_im_path, bbox_*, class, test),
    so `loadmat(...)["annotations"][0]` yields one record per image as in the real file.
    Returns (relative_im_path, class id 1..196, is_test) per image.
    """
    from scipy.io import savemat

    entries = []
    for class_id in range(1, CARS_CLASSES + 1):
        for n in range(images_in_class(class_id)):
            entries.append((f"car_ims/{len(entries) + 1:06d}.jpg", class_id, n % 2 == 1))
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    annotations = np.zeros((1, len(entries)), dtype=[(f, "O") for f in fields])
    for i, (rel, class_id, is_test) in enumerate(entries):
        write_image(root / rel, class_id)
        annotations[0, i] = (np.array([rel]), np.array([[1]], dtype=np.uint16), np.array([[1]], dtype=np.uint16),
                             np.array([[15]], dtype=np.uint16), np.array([[11]], dtype=np.uint16),
                             np.array([[class_id]], dtype=np.uint8), np.array([[int(is_test)]], dtype=np.uint8))
    class_names = np.empty((1, CARS_CLASSES), dtype=object)
    for c in range(CARS_CLASSES):
        class_names[0, c] = f"Car {c + 1}"
    savemat(root / "cars_annos.mat", {"annotations": annotations, "class_names": class_names})
    return entries


def build_sop(root: Path, train_classes: int = 12, test_classes: int = 12) -> dict[str, list[tuple[str, int]]]:
    """`root/Stanford_Online_Products/{Ebay_train.txt, Ebay_test.txt, <super>_final/<product>_<n>.JPG}`.

    Class ids run on from train into test as in the real files (1..11318 train, 11319..22634 test).
    Returns {"train": [(path, class_id)], "test": [...]}.
    """
    folder = root / "Stanford_Online_Products"
    splits: dict[str, list[tuple[str, int, int]]] = {"train": [], "test": []}
    class_ids = {"train": range(1, train_classes + 1),
                 "test": range(train_classes + 1, train_classes + test_classes + 1)}
    for split, ids in class_ids.items():
        for class_id in ids:
            super_id = 1 + (class_id - 1) % len(SOP_SUPER_CLASSES)
            product = 111085122870 + class_id
            for n in range(images_in_class(class_id)):
                rel = f"{SOP_SUPER_CLASSES[super_id - 1]}_final/{product}_{n}.JPG"
                write_image(folder / rel, class_id)
                splits[split].append((rel, class_id, super_id))
    for split, rows in splits.items():
        lines = ["image_id class_id super_class_id path"]
        lines += [f"{i} {c} {s} {rel}" for i, (rel, c, s) in enumerate(rows, start=1)]
        (folder / f"Ebay_{split}.txt").write_text("\n".join(lines) + "\n")
    return {split: [(rel, c) for rel, c, _ in rows] for split, rows in splits.items()}
