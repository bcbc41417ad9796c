"""CUB-200-2011, Cars-196 and SOP against tiny fake archives laid out like the real ones (see fake_archives.py).

Expected splits are computed here from the archive manifests, not taken from the loader: class-disjoint
halves for retrieval (CUB 1-100 / 101-200, Cars 1-98 / 99-196, SOP Ebay_train / Ebay_test), each
renumbered from 0; each dataset's own image split over all classes for classification.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fake_archives import build_cars, build_cub, build_sop, class_colour
from pipeline.data import DatasetNotFoundError, load_dataset
from pipeline.data.files import decoded_loader
from pipeline.data.samplers import ClassBalancedBatchSampler

# torchvision 0.29 deprecates its image codecs in favour of TorchCodec; reported to the lead, muted here only.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    root = tmp_path_factory.mktemp("archives")
    return root, {"cub200": build_cub(root), "cars196": build_cars(root / "cars196"), "sop": build_sop(root)}


def _check(data, expected_paths: list[Path], expected_labels: list[int], num_classes: int) -> None:
    assert list(data.paths) == expected_paths
    assert data.labels.tolist() == expected_labels
    assert data.num_classes == num_classes
    assert data.labels.dtype == torch.long and data.channels == 3


@pytest.mark.parametrize("split, first, last", [("train", 1, 100), ("test", 101, 200)])
def test_cub_retrieval_halves(archives, split, first, last):
    root, manifests = archives
    rows = [(rel, c) for rel, c, _ in manifests["cub200"] if first <= c <= last]
    data = load_dataset("cub200", split, root=root)
    images = root / "CUB_200_2011" / "images"
    _check(data, [images / rel for rel, _ in rows], [c - first for _, c in rows], 100)
    assert sorted(set(data.labels.tolist())) == list(range(100))


@pytest.mark.parametrize("split, first, last", [("train", 1, 98), ("test", 99, 196)])
def test_cars_retrieval_halves(archives, split, first, last):
    root, manifests = archives
    rows = [(rel, c) for rel, c, _ in manifests["cars196"] if first <= c <= last]
    data = load_dataset("cars196", split, root=root)  # found in root/cars196
    _check(data, [root / "cars196" / rel for rel, _ in rows], [c - first for _, c in rows], 98)
    assert sorted(set(data.labels.tolist())) == list(range(98))


@pytest.mark.parametrize("split, first", [("train", 1), ("test", 13)])
def test_sop_retrieval_halves(archives, split, first):
    root, manifests = archives
    rows = manifests["sop"][split]
    data = load_dataset("sop", split, root=root)
    folder = root / "Stanford_Online_Products"
    _check(data, [folder / rel for rel, _ in rows], [c - first for _, c in rows], 12)
    if split == "train":  # the real Ebay_train.txt's first image
        assert data.paths[0] == folder / "bicycle_final" / "111085122871_0.JPG"


@pytest.mark.parametrize("name", ["cub200", "cars196", "sop"])
def test_retrieval_halves_are_class_disjoint_and_cover_the_archive(archives, name):
    root, manifests = archives
    rows = manifests[name] if name != "sop" else manifests["sop"]["train"] + manifests["sop"]["test"]
    class_of = {rel.split("/")[-1]: c for rel, c, *_ in rows}
    halves = [load_dataset(name, split, root=root) for split in ("train", "test")]
    classes = [{class_of[p.name] for p in half.paths} for half in halves]
    assert not classes[0] & classes[1]
    assert len(halves[0]) + len(halves[1]) == len(rows)


@pytest.mark.parametrize("name, num_classes", [("cub200", 200), ("cars196", 196)])
@pytest.mark.parametrize("split", ["train", "test"])
def test_classification_protocol_uses_the_image_split_over_all_classes(archives, name, num_classes, split):
    """Labels must be class id - 1 in both splits, even where a class has no test image in the archive."""
    root, manifests = archives
    # CUB's flag says "is training image", Cars' says "is test image".
    wanted = (lambda flag: flag == (split == "train")) if name == "cub200" else (lambda flag: flag == (split == "test"))
    rows = [(rel, c) for rel, c, flag in manifests[name] if wanted(flag)]
    folder = root / "CUB_200_2011" / "images" if name == "cub200" else root / "cars196"
    data = load_dataset(name, split, root=root, protocol="classification")
    _check(data, [folder / rel for rel, _ in rows], [c - 1 for _, c in rows], num_classes)


def test_sop_has_no_classification_protocol(archives):
    with pytest.raises(ValueError, match="sop: only the retrieval protocol"):
        load_dataset("sop", "train", root=archives[0], protocol="classification")


def test_archive_folder_itself_is_accepted_as_root(archives):
    root, _ = archives
    assert load_dataset("cub200", "test", root=root / "CUB_200_2011").paths == load_dataset("cub200", "test", root=root).paths
    assert len(load_dataset("sop", "test", root=root / "Stanford_Online_Products")) == len(load_dataset("sop", "test", root=root))


@pytest.mark.parametrize("name, how", [("cub200", "CUB_200_2011.tgz"), ("cars196", "cars_annos.mat"),
                                       ("sop", "Stanford_Online_Products.zip")])
def test_missing_archive_says_how_to_obtain_it(tmp_path, name, how):
    with pytest.raises(DatasetNotFoundError, match="download") as info:
        load_dataset(name, "train", root=tmp_path)
    assert how in str(info.value) and str(tmp_path) in str(info.value)


# ---------------------------------------------------------------------------------------------- decoding


def test_decoded_loader_gives_uint8_canvas_batches_of_the_right_images(archives):
    """Every 16 x 12 fake photo, resized to a shorter side of 8 (10 x 8), sits in the middle of a 12 x 8
    canvas of CANVAS_FILL (pipeline.data.files)."""
    from pipeline.data.augment import CANVAS_FILL

    root, manifests = archives
    data = load_dataset("sop", "test", root=root)
    colour = {rel.split("/")[-1]: class_colour(c) for rel, c in manifests["sop"]["test"]}
    seen = 0
    for images, labels in decoded_loader(data, load_size=8, batch_size=5, workers=0):
        assert images.dtype == torch.uint8 and images.shape == (len(labels), 3, 8, 12)
        for image, label, path in zip(images, labels.tolist(), data.paths[seen: seen + len(labels)]):
            assert label == int(data.labels[seen])
            # A flat-colour JPEG decodes to its colour within JPEG rounding.
            assert (image[:, :, 1:11].int() - torch.tensor(colour[path.name]).view(3, 1, 1)).abs().max() <= 4
            assert (image[:, :, [0, 11]] == CANVAS_FILL).all()
            seen += 1
    assert seen == len(data)


@pytest.mark.parametrize("height, width, box", [
    (30, 40, (3, 48)),    # 4:3: 36 x 48 on the 54-wide canvas, centred
    (36, 54, (0, 54)),    # 3:2 fills it
    (20, 60, (0, 54)),    # 3:1: 36 x 108, cut to the middle 54 columns
    (60, 40, (9, 36)),    # portrait: 36 x 54, cut to the middle 36 rows
])
def test_canvas_holds_the_image_and_its_centre_crop_is_the_official_evaluation_crop(height, width, box):
    """on_canvas against torchvision's Resize(36) (+ the cut to the canvas): the same pixels, a value of
    CANVAS_FILL capped to one below it, the fill elsewhere; the evaluation's centre crop of the canvas is
    torchvision's Resize(36) + CenterCrop(32) of the image, the official test transform."""
    from torchvision.transforms.v2 import functional as F

    from pipeline.data.augment import CANVAS_FILL, CenterCrop
    from pipeline.data.files import on_canvas

    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    canvas = on_canvas(image, 36)
    left, columns = box
    resized = F.resize(image, 36, antialias=True)
    expected = F.center_crop(resized, [36, columns]).clamp(max=CANVAS_FILL - 1)
    assert canvas.shape == (3, 36, 54) and torch.equal(canvas[:, :, left: left + columns], expected)
    assert (canvas[:, :, :left] == CANVAS_FILL).all() and (canvas[:, :, left + columns:] == CANVAS_FILL).all()
    official = F.center_crop(resized, [32, 32]).clamp(max=CANVAS_FILL - 1)
    assert torch.equal(CenterCrop((32, 32))(canvas), official)


def test_grayscale_jpeg_is_decoded_to_three_equal_channels(archives):
    root, _ = archives
    data = load_dataset("cub200", "train", root=root)  # its first image is written as a 1-channel JPEG
    images, _ = next(iter(decoded_loader(data, load_size=6, batch_size=2, workers=0)))
    assert images.shape == (2, 3, 6, 9)
    assert torch.equal(images[0, 0], images[0, 1]) and torch.equal(images[0, 0], images[0, 2])


def test_decoded_loader_with_workers_and_class_balanced_batches(archives):
    root, _ = archives
    data = load_dataset("cars196", "test", root=root)
    sampler = ClassBalancedBatchSampler(data.labels, classes_per_batch=4, samples_per_class=2, seed=1)
    batches = list(decoded_loader(data, load_size=10, batch_sampler=sampler, workers=1))
    assert len(batches) == len(sampler)
    for (images, labels), indices in zip(batches, sampler):
        assert images.shape == (8, 3, 10, 15) and images.dtype == torch.uint8
        assert labels.tolist() == data.labels[indices].tolist()


def test_undecodable_file_names_the_path(tmp_path):
    from pipeline.data import FileImageSet

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    data = FileImageSet("fake", (bad,), torch.tensor([0]), 1, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="broken.jpg"):
        next(iter(decoded_loader(data, load_size=4, batch_size=1, workers=0)))
