"""In-memory datasets (Fashion-MNIST from the Debian files, scikit-learn digits), the registry's errors, subset_classes.

References are independent of the loader: a plain gzip + numpy read of the IDX payload, the published
first labels of Fashion-MNIST, and scikit-learn's own digits arrays.
"""
from __future__ import annotations

import gzip
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data import DATASETS, DatasetNotFoundError, FileImageSet, ImageSet, load_dataset, subset_classes
from pipeline.data import small_sets
from pipeline.data.idx import read_idx

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
needs_debian_fashion = pytest.mark.skipif(
    not all((DEBIAN_DIR / f"{n}.gz").exists() for n in FASHION_NAMES),
    reason="Debian package dataset-fashion-mnist not installed (apt-get install dataset-fashion-mnist; CI installs it)",
)


def raw_idx_payload(path: Path, header_bytes: int) -> np.ndarray:
    """The bytes after the header, read without the loader: images have a 16-byte header, labels 8."""
    return np.frombuffer(gzip.decompress(path.read_bytes())[header_bytes:], dtype=np.uint8)


def idx1_bytes(labels: np.ndarray) -> bytes:
    """An IDX1 uint8 file by hand: magic 0x00000801, count big-endian, then the bytes."""
    return b"\x00\x00\x08\x01" + len(labels).to_bytes(4, "big") + labels.astype(np.uint8).tobytes()


# ---------------------------------------------------------------------------------------------- Fashion-MNIST


@pytest.fixture(scope="module")
def fashion():
    if not all((DEBIAN_DIR / f"{n}.gz").exists() for n in FASHION_NAMES):
        pytest.skip("Debian package dataset-fashion-mnist not installed (CI installs it)")
    return {split: load_dataset("fashion_mnist", split) for split in ("train", "test")}


@needs_debian_fashion
@pytest.mark.parametrize("split, size", [("train", 60_000), ("test", 10_000)])
def test_fashion_mnist_real_files_sizes_and_classes(fashion, split, size):
    data = fashion[split]
    assert isinstance(data, ImageSet)
    assert data.images.shape == (size, 1, 28, 28)
    assert data.images.dtype == torch.uint8 and data.labels.dtype == torch.long
    assert data.num_classes == 10 and data.channels == 1 and data.image_size == 28
    # Fashion-MNIST is exactly balanced: 6,000 train / 1,000 test images per class.
    assert Counter(data.labels.tolist()) == {c: size // 10 for c in range(10)}


@needs_debian_fashion
@pytest.mark.parametrize("split, prefix", [("train", "train"), ("test", "t10k")])
def test_fashion_mnist_matches_raw_idx_bytes(fashion, split, prefix):
    data = fashion[split]
    pixels = raw_idx_payload(DEBIAN_DIR / f"{prefix}-images-idx3-ubyte.gz", 16)
    labels = raw_idx_payload(DEBIAN_DIR / f"{prefix}-labels-idx1-ubyte.gz", 8)
    assert np.array_equal(data.images.numpy().reshape(-1), pixels)
    assert np.array_equal(data.labels.numpy(), labels)


@needs_debian_fashion
def test_fashion_mnist_published_first_labels_and_statistics(fashion):
    # First ten labels as published (train: ankle boot, T-shirt, T-shirt, dress, ...; test: ankle boot, pullover, ...).
    assert fashion["train"].labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert fashion["test"].labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    # The normalisation constants the augmentations use must be the train set's own statistics.
    # Exact moments from the grey-level histogram (cheaper than float64 over 47M pixels).
    counts = np.bincount(fashion["train"].images.numpy().reshape(-1), minlength=256).astype(np.float64)
    levels = np.arange(256) / 255.0
    mean = (counts * levels).sum() / counts.sum()
    std = np.sqrt((counts * (levels - mean) ** 2).sum() / counts.sum())
    assert fashion["train"].mean[0] == pytest.approx(mean, abs=1e-4)
    assert fashion["train"].std[0] == pytest.approx(std, abs=1e-4)


def _fashion_copy(folder: Path, test_labels: np.ndarray, plain_test: bool = False) -> None:
    """A copy of the Debian folder whose test labels are replaced, so reading it is distinguishable.

    Train files are symlinked (not read by a test-split load); with `plain_test` the test files are
    written decompressed, as torchvision's FashionMNIST/raw layout keeps them.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name in FASHION_NAMES[:2]:
        (folder / f"{name}.gz").symlink_to(DEBIAN_DIR / f"{name}.gz")
    images_gz = DEBIAN_DIR / "t10k-images-idx3-ubyte.gz"
    if plain_test:
        (folder / "t10k-images-idx3-ubyte").write_bytes(gzip.decompress(images_gz.read_bytes()))
        (folder / "t10k-labels-idx1-ubyte").write_bytes(idx1_bytes(test_labels))
    else:
        shutil.copy(images_gz, folder / "t10k-images-idx3-ubyte.gz")
        (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx1_bytes(test_labels), compresslevel=1))


@needs_debian_fashion
@pytest.mark.parametrize("layout, plain", [(".", False), ("fashion-mnist", False), ("FashionMNIST/raw", True)])
def test_fashion_mnist_root_lookup_reads_the_copy(fashion, tmp_path, monkeypatch, layout, plain):
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    real = fashion["test"].labels.numpy()
    _fashion_copy(tmp_path / "data" / layout, 9 - real, plain_test=plain)
    loaded = load_dataset("fashion_mnist", "test", root=tmp_path / "data")
    assert np.array_equal(loaded.labels.numpy(), 9 - real)
    assert torch.equal(loaded.images, fashion["test"].images)


@needs_debian_fashion
def test_fashion_mnist_env_dir_is_used_and_root_wins_over_it(fashion, tmp_path, monkeypatch):
    real = fashion["test"].labels.numpy()
    _fashion_copy(tmp_path / "env", (real + 1) % 10)
    _fashion_copy(tmp_path / "root", 9 - real)
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "env"))
    assert np.array_equal(load_dataset("fashion_mnist", "test").labels.numpy(), (real + 1) % 10)
    assert np.array_equal(load_dataset("fashion_mnist", "test", root=tmp_path / "root").labels.numpy(), 9 - real)


@needs_debian_fashion
def test_truncated_gzip_idx_is_refused_naming_the_file(fashion, tmp_path, monkeypatch):
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    _fashion_copy(tmp_path, fashion["test"].labels.numpy())
    victim = tmp_path / "t10k-images-idx3-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset("fashion_mnist", "test", root=tmp_path)


@needs_debian_fashion
def test_truncated_plain_idx_is_refused_naming_the_file(tmp_path):
    victim = tmp_path / "t10k-images-idx3-ubyte"
    victim.write_bytes(gzip.decompress((DEBIAN_DIR / "t10k-images-idx3-ubyte.gz").read_bytes())[:-784])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte is truncated"):
        read_idx(victim)


def test_idx_reader_hand_made_file_and_bad_magic(tmp_path):
    # IDX3 int32 (type 0x0C), shape (2, 1, 3), big-endian payload 0..5.
    path = tmp_path / "tiny-idx3"
    path.write_bytes(bytes([0, 0, 0x0C, 3]) + b"".join(n.to_bytes(4, "big") for n in (2, 1, 3))
                     + b"".join(v.to_bytes(4, "big") for v in range(6)))
    assert read_idx(path).tolist() == [[[0, 1, 2]], [[3, 4, 5]]]
    path.write_bytes(b"\x01\x02\x08\x01" + (0).to_bytes(4, "big"))
    with pytest.raises(ValueError, match="tiny-idx3 is not an IDX file"):
        read_idx(path)


def test_fashion_mnist_missing_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "env-dir"))
    monkeypatch.setattr(small_sets, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "no-such-dir")
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist") as info:
        load_dataset("fashion_mnist", "train", root=tmp_path / "empty")
    for looked_in in ("empty", "empty/fashion-mnist", "empty/FashionMNIST/raw", "env-dir", "no-such-dir"):
        assert f"'{tmp_path / looked_in}'" in str(info.value)


# ---------------------------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits():
    return {split: load_dataset("digits", split) for split in ("train", "test")}


def test_digits_sizes_range_and_labels(digits):
    # 1,797 images; test_size 0.3 -> ceil(539.1) = 540 test, 1,257 train.
    assert digits["train"].images.shape == (1257, 1, 8, 8) and digits["test"].images.shape == (540, 1, 8, 8)
    for data in digits.values():
        assert data.images.dtype == torch.uint8
        # sklearn pixels run 0..16; scaled to 0..255 both ends occur.
        assert data.images.min() == 0 and data.images.max() == 255
        assert sorted(set(data.labels.tolist())) == list(range(10)) and data.num_classes == 10


def test_digits_split_is_a_disjoint_stratified_partition(digits):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    expected = Counter((np.rint(img * 255 / 16).astype(np.uint8).tobytes(), int(y)) for img, y in zip(bunch.images, bunch.target))
    seen = Counter((img[0].numpy().tobytes(), int(y)) for data in digits.values() for img, y in zip(data.images, data.labels))
    assert seen == expected  # together exactly the full set, so the halves are disjoint
    full = Counter(bunch.target.tolist())
    test_counts = Counter(digits["test"].labels.tolist())
    assert all(abs(test_counts[c] - 0.3 * full[c]) <= 1 for c in range(10))


def test_digits_split_is_deterministic(digits):
    again = load_dataset("digits", "train")
    assert torch.equal(again.images, digits["train"].images) and torch.equal(again.labels, digits["train"].labels)


# ---------------------------------------------------------------------------------------------- registry errors


def test_registry_lists_every_dataset():
    assert set(DATASETS) == {"digits", "fashion_mnist", "cifar10", "cifar100", "stl10", "cub200", "cars196", "sop"}


def test_unknown_dataset_names_value_and_suggests():
    with pytest.raises(ValueError, match=r"'fashion_mnst'.*did you mean 'fashion_mnist'"):
        load_dataset("fashion_mnst", "train")


@pytest.mark.parametrize("kwargs, value", [({"split": "tran"}, "'tran'"), ({"split": "train", "protocol": "clasification"}, "'clasification'")])
def test_unknown_split_or_protocol_names_value_and_choices(kwargs, value):
    with pytest.raises(ValueError) as info:
        load_dataset("digits", **kwargs)
    assert value in str(info.value) and ("'train'" in str(info.value) or "'classification'" in str(info.value))


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10"])
def test_torchvision_sets_missing_say_how_to_get_them(tmp_path, name):
    with pytest.raises(DatasetNotFoundError, match="download: true") as info:
        load_dataset(name, "train", root=tmp_path)
    assert str(tmp_path) in str(info.value)


# ---------------------------------------------------------------------------------------------- subset_classes


def _brute_force_subset(images: list, labels: list[int], classes: list[int]) -> tuple[list, list[int]]:
    kept_images, kept_labels = [], []
    for image, label in zip(images, labels):
        for new_label, wanted in enumerate(classes):
            if label == wanted:
                kept_images.append(image)
                kept_labels.append(new_label)
    return kept_images, kept_labels


@pytest.mark.parametrize("classes", [[5, 6, 7, 8, 9], [7, 2, 5], [3]])
def test_subset_classes_keeps_and_relabels_in_memory(digits, classes):
    data = digits["train"]
    subset = subset_classes(data, classes)
    images, labels = _brute_force_subset(list(data.images), data.labels.tolist(), classes)
    assert subset.labels.tolist() == labels
    assert torch.equal(subset.images, torch.stack(images))
    assert subset.num_classes == len(classes)
    kept = subset_classes(data, classes, relabel=False)
    assert kept.labels.tolist() == [classes[i] for i in labels] and kept.num_classes == 10


def test_subset_classes_on_file_sets_keeps_paths_aligned():
    labels = [0, 3, 1, 3, 2, 0, 1]
    data = FileImageSet("fake", tuple(Path(f"img{i}.jpg") for i in range(7)), torch.tensor(labels), 4, (0.5,) * 3, (0.5,) * 3)
    subset = subset_classes(data, [3, 0])
    paths, new_labels = _brute_force_subset(list(data.paths), labels, [3, 0])
    assert list(subset.paths) == paths == [Path("img0.jpg"), Path("img1.jpg"), Path("img3.jpg"), Path("img5.jpg")]
    assert subset.labels.tolist() == new_labels == [1, 0, 0, 1]


@pytest.mark.parametrize("classes, message", [([10], r"classes \[10\] out of range 0..9"), ([-1, 2], r"\[-1\]"), ([1, 1], "duplicate")])
def test_subset_classes_rejects_bad_classes(digits, classes, message):
    with pytest.raises(ValueError, match=message):
        subset_classes(digits["test"], classes)
