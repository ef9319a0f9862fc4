from __future__ import annotations

import gzip
import struct
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits
from torch.utils.data import Subset
from torchvision.datasets import ImageFolder

from lightly_grpo.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    ArrayImageDataset,
    dataset_labels,
    datasets,
    default_dataset_name,
    load_digits_split,
    load_fashion_mnist,
    load_image_folder,
    read_idx,
    resolve_dataset,
    simclr_transform,
)

# --------------------------------------------------------------------------- IDX files


def _idx_bytes(array: np.ndarray, type_code: int) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_roundtrip_uint8_and_int32(tmp_path: Path, compress: bool) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 3, 4), dtype=np.uint8)
    values = rng.integers(-1000, 1000, size=(7,), dtype=np.int32)
    for name, array, code in [("img", images, 0x08), ("val", values.astype(">i4"), 0x0C)]:
        raw = _idx_bytes(array, code)
        path = tmp_path / (name + (".gz" if compress else ""))
        path.write_bytes(gzip.compress(raw) if compress else raw)
        out = read_idx(path)
        assert out.shape == array.shape
        np.testing.assert_array_equal(out, array)
        assert out.dtype.isnative and out.flags.writeable


def test_read_idx_detects_gzip_by_content_not_name(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = tmp_path / "no_suffix"
    path.write_bytes(gzip.compress(_idx_bytes(array, 0x08)))
    np.testing.assert_array_equal(read_idx(path), array)


def test_read_idx_truncated_data_raises(tmp_path: Path) -> None:
    raw = _idx_bytes(np.zeros((4, 5, 5), dtype=np.uint8), 0x08)
    path = tmp_path / "truncated.idx"
    path.write_bytes(raw[:-3])
    with pytest.raises(ValueError, match="truncated.idx"):
        read_idx(path)


def test_read_idx_bad_magic_raises(tmp_path: Path) -> None:
    path = tmp_path / "bad_magic.idx"
    path.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 2) + b"\x00\x01")
    with pytest.raises(ValueError, match="bad_magic.idx"):
        read_idx(path)


def test_read_idx_corrupted_gzip_raises(tmp_path: Path) -> None:
    compressed = bytearray(gzip.compress(_idx_bytes(np.ones((50, 8), dtype=np.uint8), 0x08)))
    compressed[len(compressed) // 2] ^= 0xFF
    path = tmp_path / "corrupt.gz"
    path.write_bytes(bytes(compressed[:-6]))
    with pytest.raises(ValueError, match="corrupt.gz"):
        read_idx(path)


def test_read_idx_missing_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.gz"
    with pytest.raises(FileNotFoundError, match="nope.gz"):
        read_idx(path)


def test_read_idx_real_fashion_mnist(fashion_mnist: None) -> None:
    images = read_idx(FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,)
    assert set(np.unique(labels).tolist()) == set(range(10))


def test_load_fashion_mnist_splits(fashion_mnist: None) -> None:
    images, labels = load_fashion_mnist(split="test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    # The test split is balanced: 1,000 per class.
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, 1000))
    # Images are not blank and span the whole pixel range.
    assert images.min() == 0 and images.max() == 255
    with pytest.raises(ValueError, match="valid"):
        load_fashion_mnist(split="valid")


def test_load_fashion_mnist_missing_root_names_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_fashion_mnist(tmp_path, "train")


# --------------------------------------------------------------------------- digits


def test_digits_split_sizes_and_stratification() -> None:
    train_x, train_y = load_digits_split("train", test_fraction=0.2, seed=0)
    test_x, test_y = load_digits_split("test", test_fraction=0.2, seed=0)
    assert train_x.shape[1:] == (8, 8) and train_x.dtype == np.uint8
    assert len(train_y) + len(test_y) == 1797
    assert abs(len(test_y) - 0.2 * 1797) <= 1
    assert train_x.max() == 255 and train_x.min() == 0
    # Stratified: every class has about 20% of its images in the test split.
    total = np.bincount(train_y, minlength=10) + np.bincount(test_y, minlength=10)
    share = np.bincount(test_y, minlength=10) / total
    assert np.all(np.abs(share - 0.2) < 0.02)
    # Disjoint splits: together they hold as many distinct images as the whole set.
    all_images = np.concatenate([train_x, test_x]).reshape(1797, -1)
    reference = np.rint(load_digits().images * (255 / 16)).astype(np.uint8).reshape(1797, -1)
    assert len(np.unique(all_images, axis=0)) == len(np.unique(reference, axis=0))
    np.testing.assert_array_equal(load_digits_split("test", seed=0)[0], test_x)
    assert not np.array_equal(load_digits_split("test", seed=1)[0], test_x)


def test_array_dataset_validation() -> None:
    with pytest.raises(ValueError, match="float"):
        ArrayImageDataset(np.zeros((2, 4, 4), dtype=np.float32), [0, 1])
    with pytest.raises(ValueError, match=r"\(3,\)"):
        ArrayImageDataset(np.zeros((2, 4, 4), dtype=np.uint8), [0, 1, 2])
    dataset = ArrayImageDataset(np.zeros((2, 4, 4), dtype=np.uint8), [0, 2])
    assert dataset.classes == ["0", "1", "2"]
    image, label = dataset[1]
    assert isinstance(image, Image.Image) and image.mode == "L" and label == 2


# --------------------------------------------------------------------------- folders, names


def test_load_image_folder_two_classes(
    tmp_path: Path, image_folder_writer: Callable[..., None]
) -> None:
    image_folder_writer(tmp_path)
    dataset = load_image_folder(tmp_path, transform=simclr_transform(input_size=16))
    assert dataset.classes == ["cat", "dog"] and len(dataset) == 6
    views, label = dataset[4]
    assert label == 1 and len(views) == 2 and views[0].shape == (1, 16, 16)
    np.testing.assert_array_equal(dataset_labels(dataset), [0, 0, 0, 1, 1, 1])


def test_load_image_folder_missing_and_empty(tmp_path: Path) -> None:
    missing = tmp_path / "does_not_exist"
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        load_image_folder(missing)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty_dir"):
        load_image_folder(empty)


def test_resolve_dataset_folder_with_and_without_splits(
    tmp_path: Path, image_folder_writer: Callable[..., None]
) -> None:
    image_folder_writer(tmp_path / "split" / "train", per_class=3)
    image_folder_writer(tmp_path / "split" / "test", per_class=1)
    train = resolve_dataset(str(tmp_path / "split"), "train")
    test = resolve_dataset(tmp_path / "split", "test")
    assert isinstance(train, ImageFolder) and (len(train), len(test)) == (6, 2)
    image_folder_writer(tmp_path / "flat", per_class=2)
    assert len(resolve_dataset(tmp_path / "flat", "test")) == 4


def test_resolve_dataset_unknown_name() -> None:
    with pytest.raises(FileNotFoundError, match="no-such-dataset"):
        resolve_dataset("no-such-dataset", "train")
    with pytest.raises(ValueError, match="validation"):
        resolve_dataset("digits", "validation")


def test_resolve_default_picks_fashion_mnist(fashion_mnist: None) -> None:
    assert default_dataset_name() == "fashion-mnist"
    dataset = resolve_dataset("default", "test")
    assert isinstance(dataset, ArrayImageDataset)
    assert dataset.images.shape == (10000, 28, 28)
    assert dataset.classes == FASHION_MNIST_CLASSES


def test_resolve_default_falls_back_to_digits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", tmp_path)
    assert default_dataset_name() == "digits"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = resolve_dataset("default", "train", seed=0)
    assert any("digits" in str(w.message) for w in caught)
    assert isinstance(dataset, ArrayImageDataset) and dataset.images.shape[1:] == (8, 8)


def test_dataset_labels_of_arrays_subsets_and_bad_input() -> None:
    dataset = ArrayImageDataset(np.zeros((4, 2, 2), dtype=np.uint8), [3, 1, 2, 0])
    np.testing.assert_array_equal(dataset_labels(dataset), [3, 1, 2, 0])
    np.testing.assert_array_equal(dataset_labels(Subset(dataset, [2, 0])), [2, 3])
    with pytest.raises(ValueError, match="list"):
        dataset_labels([1, 2])  # type: ignore[arg-type]
