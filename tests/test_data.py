from __future__ import annotations

import gzip
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torchvision.datasets import ImageFolder

from lightly_grpo import data
from lightly_grpo.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    ArrayImageDataset,
    DatasetSpec,
    ToChannels,
    default_dataset_name,
    eval_transform,
    images_for_display,
    labeled_subset,
    load_digits_split,
    load_fashion_mnist,
    load_image_folder,
    make_loader,
    random_subset,
    read_idx,
    resolve_dataset,
    simclr_transform,
)

HAS_FASHION = all(
    (FASHION_MNIST_DIR / f).is_file()
    for f in (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    )
)
needs_fashion = pytest.mark.skipif(
    not HAS_FASHION,
    reason=f"Fashion-MNIST files not in {FASHION_MNIST_DIR} (apt install dataset-fashion-mnist)",
)


def _idx_bytes(array: np.ndarray, type_code: int) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


# --------------------------------------------------------------------------- read_idx


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


@needs_fashion
def test_read_idx_real_fashion_mnist() -> None:
    images = read_idx(FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,)
    assert set(np.unique(labels).tolist()) == set(range(10))


@needs_fashion
def test_load_fashion_mnist_splits() -> None:
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


# --------------------------------------------------------------------------- digits, subsets


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


def test_labeled_subset_balanced_deterministic_nested() -> None:
    labels = np.repeat(np.arange(5), [100, 50, 20, 10, 3])
    idx = labeled_subset(labels, 0.1, seed=3)
    counts = np.bincount(labels[idx], minlength=5)
    np.testing.assert_array_equal(counts, [10, 5, 2, 1, 1])  # at least one per class
    assert np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, labeled_subset(labels, 0.1, seed=3))
    assert not np.array_equal(idx, labeled_subset(labels, 0.1, seed=4))
    larger = labeled_subset(labels, 0.5, seed=3)
    assert set(idx.tolist()) <= set(larger.tolist())
    np.testing.assert_array_equal(labeled_subset(labels, 1.0), np.arange(len(labels)))


@pytest.mark.parametrize("fraction", [0.0, 1.5, -0.1, float("nan")])
def test_labeled_subset_bad_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        labeled_subset([0, 1, 1], fraction)


def test_random_subset() -> None:
    idx = random_subset(100, 10, seed=0)
    assert len(np.unique(idx)) == 10 and idx.min() >= 0 and idx.max() < 100
    assert np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, random_subset(100, 10, seed=0))
    assert not np.array_equal(idx, random_subset(100, 10, seed=1))
    np.testing.assert_array_equal(random_subset(7, None, seed=0), np.arange(7))
    np.testing.assert_array_equal(random_subset(7, 50, seed=0), np.arange(7))
    with pytest.raises(ValueError, match="-1"):
        random_subset(7, -1)


# --------------------------------------------------------------------------- transforms


def _digit_dataset(transform: object = None) -> ArrayImageDataset:
    images, labels = load_digits_split("train")
    return ArrayImageDataset(images, labels, transform)  # type: ignore[arg-type]


def test_simclr_transform_gives_two_differing_one_channel_views() -> None:
    torch.manual_seed(0)
    dataset = _digit_dataset(simclr_transform(input_size=32))
    views, label = dataset[3]
    assert isinstance(label, int) and label == int(dataset.labels[3])
    assert isinstance(views, list) and len(views) == 2
    for view in views:
        assert view.shape == (1, 32, 32) and view.dtype == torch.float32
        assert torch.isfinite(view).all()
    assert not torch.equal(views[0], views[1])


def test_simclr_transform_channels_for_rgb_and_grayscale_inputs() -> None:
    torch.manual_seed(0)
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8))
    gray = rgb.convert("L")
    one, three = simclr_transform(in_channels=1), simclr_transform(in_channels=3)
    # Many draws so that the random color jitter / grayscale branches are all exercised.
    for _ in range(30):
        assert all(v.shape == (1, 32, 32) for v in one(rgb) + one(gray))
        assert all(v.shape == (3, 32, 32) for v in three(rgb) + three(gray))


def test_simclr_transform_overrides_reach_lightly() -> None:
    transform = simclr_transform(input_size=24, min_scale=0.5)
    views = transform(Image.new("L", (28, 28), color=128))
    assert views[0].shape == (1, 24, 24)
    crop = transform.transforms[0].transform.transforms[1]
    assert crop.scale == (0.5, 1.0)


def test_loader_gives_lightly_batch_format() -> None:
    dataset = _digit_dataset(simclr_transform(input_size=16))
    loader = make_loader(dataset, batch_size=8, shuffle=True, seed=0)
    views, labels = next(iter(loader))
    assert len(views) == 2 and views[0].shape == (8, 1, 16, 16)
    assert labels.shape == (8,) and labels.dtype == torch.int64
    # Seeded shuffling: same seed, same order; different seed, different order.
    plain = _digit_dataset(eval_transform(input_size=8))

    def first_labels(seed: int) -> list[int]:
        batch = next(iter(make_loader(plain, batch_size=64, shuffle=True, seed=seed)))
        return [int(y) for y in batch[1]]

    assert first_labels(5) == first_labels(5)
    assert first_labels(5) != first_labels(6)


def test_eval_transform_deterministic_and_normalized() -> None:
    dataset = _digit_dataset(eval_transform(input_size=32))
    a, _ = dataset[0]
    b, _ = dataset[0]
    assert a.shape == (1, 32, 32)
    assert torch.equal(a, b)
    assert eval_transform(32, in_channels=3)(Image.new("L", (8, 8))).shape == (3, 32, 32)


@needs_fashion
def test_grayscale_normalize_matches_fashion_mnist_statistics() -> None:
    images, labels = load_fashion_mnist(split="train")
    dataset = ArrayImageDataset(images[:2000], labels[:2000], eval_transform(input_size=28))
    batch = torch.stack([dataset[i][0] for i in range(len(dataset))])
    assert abs(batch.mean().item()) < 0.05
    assert abs(batch.std().item() - 1.0) < 0.05


def test_to_channels_tensors() -> None:
    gray = torch.rand(1, 5, 5)
    assert ToChannels(3)(gray).shape == (3, 5, 5)
    rgb = torch.rand(3, 5, 5)
    out = ToChannels(1)(rgb)
    expected = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    torch.testing.assert_close(out[0], expected)
    with pytest.raises(ValueError, match="2"):
        ToChannels(2)


def test_array_dataset_validation() -> None:
    with pytest.raises(ValueError, match="float"):
        ArrayImageDataset(np.zeros((2, 4, 4), dtype=np.float32), [0, 1])
    with pytest.raises(ValueError, match=r"\(3,\)"):
        ArrayImageDataset(np.zeros((2, 4, 4), dtype=np.uint8), [0, 1, 2])
    dataset = ArrayImageDataset(np.zeros((2, 4, 4), dtype=np.uint8), [0, 2])
    assert dataset.classes == ["0", "1", "2"]
    image, label = dataset[1]
    assert isinstance(image, Image.Image) and image.mode == "L" and label == 2


# --------------------------------------------------------------------------- image folders


def _write_image_folder(root: Path, per_class: int = 3, size: int = 20) -> None:
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size + i, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")


def test_load_image_folder_two_classes(tmp_path: Path) -> None:
    _write_image_folder(tmp_path)
    dataset = load_image_folder(tmp_path, transform=simclr_transform(input_size=16))
    assert dataset.classes == ["cat", "dog"] and len(dataset) == 6
    views, label = dataset[4]
    assert label == 1 and len(views) == 2 and views[0].shape == (1, 16, 16)
    shown = images_for_display(dataset, [0, 5])
    assert shown.shape == (2, 64, 64, 3) and shown.dtype == np.uint8
    first = np.asarray(Image.open(dataset.samples[0][0]).convert("RGB").resize((64, 64)))
    np.testing.assert_array_equal(shown[0], first)


def test_load_image_folder_missing_and_empty(tmp_path: Path) -> None:
    missing = tmp_path / "does_not_exist"
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        load_image_folder(missing)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty_dir"):
        load_image_folder(empty)


def test_resolve_dataset_folder_with_and_without_splits(tmp_path: Path) -> None:
    _write_image_folder(tmp_path / "split" / "train", per_class=3)
    _write_image_folder(tmp_path / "split" / "test", per_class=1)
    train = resolve_dataset(str(tmp_path / "split"), "train")
    test = resolve_dataset(tmp_path / "split", "test")
    assert isinstance(train, ImageFolder) and (len(train), len(test)) == (6, 2)
    _write_image_folder(tmp_path / "flat", per_class=2)
    assert len(resolve_dataset(tmp_path / "flat", "test")) == 4


def test_resolve_dataset_unknown_name() -> None:
    with pytest.raises(FileNotFoundError, match="no-such-dataset"):
        resolve_dataset("no-such-dataset", "train")
    with pytest.raises(ValueError, match="validation"):
        resolve_dataset("digits", "validation")


@needs_fashion
def test_resolve_default_picks_fashion_mnist() -> None:
    assert default_dataset_name() == "fashion-mnist"
    dataset = resolve_dataset("default", "test")
    assert isinstance(dataset, ArrayImageDataset)
    assert dataset.images.shape == (10000, 28, 28)
    assert dataset.classes == FASHION_MNIST_CLASSES
    assert len(DatasetSpec("fashion-mnist").resolve("train")) == 60000


def test_resolve_default_falls_back_to_digits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path)
    assert default_dataset_name() == "digits"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = resolve_dataset("default", "train", seed=0)
    assert any("digits" in str(w.message) for w in caught)
    assert isinstance(dataset, ArrayImageDataset) and dataset.images.shape[1:] == (8, 8)
    spec = DatasetSpec("digits", seed=0)
    assert len(spec.resolve("train")) + len(spec.resolve("test")) == 1797


def test_images_for_display_array_and_subset() -> None:
    dataset = _digit_dataset(eval_transform())
    shown = images_for_display(dataset, [4, 2])
    np.testing.assert_array_equal(shown, dataset.images[[4, 2]])
    subset = torch.utils.data.Subset(dataset, [10, 20, 30])
    np.testing.assert_array_equal(images_for_display(subset, [2]), dataset.images[[30]])
    with pytest.raises(ValueError, match="indices"):
        images_for_display(dataset, [len(dataset)])
