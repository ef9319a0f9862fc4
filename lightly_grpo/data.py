"""Datasets, lightly transforms and data loaders for GRPO-RM post-training.

Real data that works offline: Debian's ``dataset-fashion-mnist`` (gz IDX files) and
scikit-learn's ``load_digits`` (inside the wheel). Any image directory laid out for
``torchvision.datasets.ImageFolder`` works too.

Items follow lightly's batch format: a transform that returns a list of views (such as
``lightly.transforms.SimCLRTransform``) makes each item ``(list[Tensor], int)``, which the
default collate function turns into ``(list[Tensor of shape (B, C, H, W)], Tensor of shape (B,))``.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightly.transforms import SimCLRTransform
from lightly.transforms.multi_view_transform import MultiViewTransform
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

logger = logging.getLogger(__name__)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES: list[str] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DIGITS_CLASSES: list[str] = [str(i) for i in range(10)]

#: One-channel mean/std of the Fashion-MNIST training images, in the format lightly's
#: transforms take for ``normalize=``.
GRAYSCALE_NORMALIZE: dict[str, list[float]] = {"mean": [0.2860], "std": [0.3530]}

_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_SPLITS = ("train", "test")
# IDX type codes (third magic byte) -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
_GZIP_MAGIC = b"\x1f\x8b"


# --------------------------------------------------------------------------- raw data


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads an IDX file (the MNIST format), gzip-compressed or not.

    Compression is detected from the file's first bytes, not from its name.

    Args:
        path: Path to the IDX file.

    Returns:
        Array with the dimensions stored in the file, in native byte order.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file is not a valid IDX file (bad gzip stream, bad magic
            number, or a size that does not match the header).

    Examples:
        >>> images = read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")
        >>> images.shape
        (10000, 28, 28)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: '{path}'")
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"Corrupted gzip stream in IDX file '{path}': {err}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(
            f"Not an IDX file: '{path}' (magic bytes {raw[:4].hex() or '<empty>'}; expected "
            f"00 00 <type in {sorted(_IDX_DTYPES)}> <ndim>)"
        )
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(
            f"Truncated IDX header in '{path}': {ndim} dimensions need {header_size} bytes, "
            f"file has {len(raw)}"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header_size + math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"IDX file '{path}' has {len(raw)} bytes but its header (shape {dims}, dtype "
            f"{dtype}) implies {expected}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(dims)
    # A copy in native byte order: writable (torch.from_numpy warns on read-only arrays).
    return data.astype(dtype.newbyteorder("="), copy=True)


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")


def load_fashion_mnist(
    root: str | os.PathLike[str] = FASHION_MNIST_DIR, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Loads Fashion-MNIST from its gz IDX files.

    Args:
        root: Directory holding the four ``*-idx?-ubyte.gz`` files.
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).

    Returns:
        ``(images, labels)``: uint8 array of shape (N, 28, 28) and int64 array of shape (N,).

    Raises:
        ValueError: If ``split`` is unknown or the files are inconsistent.
        FileNotFoundError: If a file is missing.

    Examples:
        >>> images, labels = load_fashion_mnist(split="test")
        >>> images.shape, labels.shape
        ((10000, 28, 28), (10000,))
    """
    _check_split(split)
    image_file, label_file = _FASHION_MNIST_FILES[split]
    images = read_idx(Path(root) / image_file)
    labels = read_idx(Path(root) / label_file)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"Expected uint8 images of shape (N, H, W) in '{Path(root) / image_file}', "
            f"got {images.dtype} {images.shape}"
        )
    if labels.shape != (images.shape[0],):
        raise ValueError(
            f"Labels in '{Path(root) / label_file}' have shape {labels.shape}, expected "
            f"({images.shape[0]},) to match the images"
        )
    return images, labels.astype(np.int64)


def load_digits_split(
    split: str = "train", test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Loads scikit-learn's 8x8 digits as uint8 images with a stratified train/test split.

    Args:
        split: ``"train"`` or ``"test"``.
        test_fraction: Share of each class that goes to the test split, in (0, 1).
        seed: Seed of the split; the same seed gives complementary train and test splits.

    Returns:
        ``(images, labels)``: uint8 array of shape (N, 8, 8) with values 0..255 and int64
        labels of shape (N,).

    Examples:
        >>> images, labels = load_digits_split("test")
        >>> images.shape[1:], images.dtype
        ((8, 8), dtype('uint8'))
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    _check_split(split)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    digits = load_digits()
    # Pixel values are 0..16; stretch them to the 0..255 range of the other datasets.
    images = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels
    )
    idx = np.sort(train_idx if split == "train" else test_idx)
    return images[idx], labels[idx]


# --------------------------------------------------------------------------- datasets


class ArrayImageDataset(Dataset[tuple[Any, int]]):
    """Images held in a uint8 numpy array, served as PIL images through a transform.

    Args:
        images: uint8 array of shape (N, H, W) (grayscale, PIL mode ``"L"``) or
            (N, H, W, 3) (PIL mode ``"RGB"``).
        labels: Integer labels, shape (N,).
        transform: Applied to each PIL image. A lightly multi-view transform makes the item
            ``(list[Tensor], int)``.
        classes: Class names; defaults to ``["0", "1", ...]`` up to the largest label.

    Examples:
        >>> images, labels = load_digits_split("train")
        >>> dataset = ArrayImageDataset(images, labels, transform=simclr_transform())
        >>> views, label = dataset[0]
        >>> len(views), views[0].shape
        (2, torch.Size([1, 32, 32]))
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | Sequence[int],
        transform: Callable[[Image.Image], Any] | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        images = np.asarray(images)
        labels_arr = np.asarray(labels)
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8, got dtype {images.dtype}")
        if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
            raise ValueError(
                f"images must have shape (N, H, W) or (N, H, W, 3), got {images.shape}"
            )
        if labels_arr.shape != (images.shape[0],):
            raise ValueError(
                f"labels must have shape ({images.shape[0]},) to match images {images.shape}, "
                f"got {labels_arr.shape}"
            )
        if labels_arr.size and (
            not np.issubdtype(labels_arr.dtype, np.integer) or labels_arr.min() < 0
        ):
            raise ValueError(
                f"labels must be non-negative integers, got dtype {labels_arr.dtype} "
                f"with minimum {labels_arr.min()}"
            )
        num_classes = int(labels_arr.max()) + 1 if labels_arr.size else 0
        if classes is None:
            classes = [str(i) for i in range(num_classes)]
        if len(classes) < num_classes:
            raise ValueError(
                f"{len(classes)} class names given but the labels go up to {num_classes - 1}"
            )
        self.images = images
        self.labels = labels_arr.astype(np.int64)
        self.transform = transform
        self.classes: list[str] = list(classes)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Any, int]:
        # uint8 (H, W) becomes mode "L", uint8 (H, W, 3) mode "RGB".
        image: Any = Image.fromarray(self.images[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


def load_image_folder(
    path: str | os.PathLike[str], transform: Callable[[Image.Image], Any] | None = None
) -> ImageFolder:
    """Loads a directory of class subfolders with ``torchvision.datasets.ImageFolder``.

    Args:
        path: Directory with one subfolder of images per class.
        transform: Applied to each (RGB) PIL image.

    Raises:
        FileNotFoundError: If ``path`` does not exist or is not a directory.
        ValueError: If it has no class subfolders or no images.

    Examples:
        >>> dataset = load_image_folder("my_images/", transform=eval_transform(64, 3))
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"Image folder not found or not a directory: '{path}'")
    try:
        return ImageFolder(str(path), transform=transform)
    except FileNotFoundError as err:
        # torchvision raises FileNotFoundError for an existing but unusable directory.
        raise ValueError(
            f"Image folder '{path}' has no class subfolders with images: {err}"
        ) from err


def default_dataset_name() -> str:
    """Returns ``"fashion-mnist"`` if the Debian files are installed, else ``"digits"``.

    Examples:
        >>> default_dataset_name() in {"fashion-mnist", "digits"}
        True
    """
    files = [name for pair in _FASHION_MNIST_FILES.values() for name in pair]
    if all((FASHION_MNIST_DIR / name).is_file() for name in files):
        return "fashion-mnist"
    return "digits"


def resolve_dataset(
    name: str | os.PathLike[str],
    split: str,
    transform: Callable[[Image.Image], Any] | None = None,
    *,
    root: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> ArrayImageDataset | ImageFolder:
    """Turns a dataset name or a directory into a dataset.

    Args:
        name: ``"default"`` (Fashion-MNIST if installed, else digits), ``"fashion-mnist"``,
            ``"digits"``, or a directory for ``ImageFolder``. A directory with ``train/``
            and ``test/`` subfolders is split by them; otherwise both splits read the
            same directory.
        split: ``"train"`` or ``"test"``.
        transform: Applied to each PIL image.
        root: Directory of the Fashion-MNIST files (default ``FASHION_MNIST_DIR``).
        seed: Seed of the digits train/test split.

    Raises:
        ValueError: If ``split`` is unknown.
        FileNotFoundError: If ``name`` is neither a known dataset nor an existing directory.

    Examples:
        >>> train = resolve_dataset("default", "train", transform=simclr_transform())
    """
    _check_split(split)
    key = os.fspath(name)
    if key == "default":
        key = default_dataset_name()
        if key == "digits":
            warnings.warn(
                f"Fashion-MNIST not found in '{FASHION_MNIST_DIR}' (Debian package "
                "dataset-fashion-mnist); using scikit-learn's 8x8 digits instead",
                UserWarning,
                stacklevel=2,
            )
        logger.info("Dataset 'default' resolved to '%s'", key)
    if key == "fashion-mnist":
        images, labels = load_fashion_mnist(FASHION_MNIST_DIR if root is None else root, split)
        return ArrayImageDataset(images, labels, transform, classes=FASHION_MNIST_CLASSES)
    if key == "digits":
        images, labels = load_digits_split(split, seed=seed)
        return ArrayImageDataset(images, labels, transform, classes=DIGITS_CLASSES)
    path = Path(key)
    if not path.is_dir():
        raise FileNotFoundError(
            f"Unknown dataset {key!r}: not one of 'default', 'fashion-mnist', 'digits' and "
            f"not an existing directory"
        )
    if (path / "train").is_dir() and (path / "test").is_dir():
        path = path / split
    else:
        logger.info(
            "'%s' has no train/ and test/ subfolders; split %r reads all of it", path, split
        )
    return load_image_folder(path, transform)


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset choice that can be resolved per split (what the CLI and recipes carry).

    Attributes:
        name: See ``resolve_dataset``.
        root: Directory of the Fashion-MNIST files, if not the Debian default.
        seed: Seed of the digits train/test split.

    Examples:
        >>> spec = DatasetSpec("digits")
        >>> len(spec.resolve("train")) + len(spec.resolve("test"))
        1797
    """

    name: str = "default"
    root: str | None = None
    seed: int = 0

    def resolve(
        self, split: str, transform: Callable[[Image.Image], Any] | None = None
    ) -> ArrayImageDataset | ImageFolder:
        """Returns the dataset of ``split`` with ``transform`` applied to each item."""
        return resolve_dataset(self.name, split, transform, root=self.root, seed=self.seed)


# --------------------------------------------------------------------------- subsets


def labeled_subset(
    labels: np.ndarray | Sequence[int], fraction: float, seed: int = 0
) -> np.ndarray:
    """Picks a class-balanced, seeded share of the items (e.g. "10% of the labels").

    Each class keeps ``max(1, round(fraction * class_size))`` items. For a fixed seed the
    subsets are nested: a smaller fraction picks a subset of a larger one.

    Args:
        labels: Integer labels, shape (N,).
        fraction: Share of each class to keep, in (0, 1].
        seed: Random seed.

    Returns:
        Sorted int64 indices into ``labels``.

    Examples:
        >>> idx = labeled_subset([0, 0, 0, 0, 1, 1, 1, 1], fraction=0.5, seed=0)
        >>> len(idx)
        4
    """
    # Written so that NaN fails too.
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    labels_arr = np.asarray(labels)
    if labels_arr.ndim != 1 or labels_arr.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D sequence, got shape {labels_arr.shape}")
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels_arr):
        members = np.flatnonzero(labels_arr == label)
        # The permutation does not depend on `fraction`, which makes subsets nested.
        order = rng.permutation(len(members))
        keep = max(1, round(fraction * len(members)))
        chosen.append(members[order[:keep]])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def random_subset(num_items: int, size: int | None, seed: int = 0) -> np.ndarray:
    """Picks ``size`` distinct indices out of ``num_items`` (all of them if ``size`` is None).

    Args:
        num_items: Number of items to pick from.
        size: Number of indices; None or ``>= num_items`` keeps all.
        seed: Random seed.

    Returns:
        Sorted int64 indices.

    Examples:
        >>> random_subset(10, 3, seed=0).shape
        (3,)
    """
    if num_items < 0:
        raise ValueError(f"num_items must be >= 0, got {num_items}")
    if size is not None and size < 0:
        raise ValueError(f"size must be >= 0 or None, got {size}")
    if size is None or size >= num_items:
        return np.arange(num_items, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_items, size=size, replace=False)).astype(np.int64)


# --------------------------------------------------------------------------- transforms


class ToChannels:
    """Converts a PIL image or a (C, H, W) tensor to ``num_channels`` channels (1 or 3).

    Put first in a pipeline, it lets one transform serve grayscale arrays and RGB image
    folders alike. Grayscale to RGB repeats the channel; RGB to grayscale uses ITU-R 601-2
    luma weights (what PIL's ``convert("L")`` does).

    Examples:
        >>> ToChannels(1)(Image.new("RGB", (4, 4))).mode
        'L'
    """

    def __init__(self, num_channels: int) -> None:
        if num_channels not in (1, 3):
            raise ValueError(f"num_channels must be 1 or 3, got {num_channels}")
        self.num_channels = num_channels

    def __call__(self, image: Any) -> Any:
        if isinstance(image, Image.Image):
            mode = "L" if self.num_channels == 1 else "RGB"
            return image if image.mode == mode else image.convert(mode)
        if isinstance(image, torch.Tensor):
            channels = image.shape[-3]
            if channels == self.num_channels:
                return image
            if channels == 1:
                return image.expand(*image.shape[:-3], 3, *image.shape[-2:]).clone()
            if channels == 3:
                weights = torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype)
                return (image * weights.view(3, 1, 1)).sum(dim=-3, keepdim=True)
            raise ValueError(
                f"Cannot convert a tensor with {channels} channels (shape {tuple(image.shape)})"
            )
        raise TypeError(f"Expected a PIL image or a tensor, got {type(image).__name__}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_channels={self.num_channels})"


def _normalize_for(in_channels: int) -> dict[str, list[float]]:
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    return {key: values * in_channels for key, values in GRAYSCALE_NORMALIZE.items()}


def simclr_transform(
    input_size: int = 32, in_channels: int = 1, **overrides: Any
) -> SimCLRTransform:
    """Lightly's ``SimCLRTransform`` set up for small grayscale images.

    Defaults differ from lightly's ImageNet ones: no Gaussian blur (it wipes out a
    28x28 image), no hue jitter and no random grayscale (no color to change), color jitter
    strength 0.5 (lightly's advice for small images), crops of at least 20% of the image,
    and Fashion-MNIST normalization. A ``ToChannels`` step runs first so that RGB inputs
    (an ``ImageFolder``) give ``in_channels`` channels as well.

    Args:
        input_size: Side of the output views in pixels.
        in_channels: Channels of the output views, 1 or 3.
        **overrides: Any other ``SimCLRTransform`` argument (e.g. ``cj_strength=1.0``).

    Returns:
        A transform mapping a PIL image to a list of two (in_channels, input_size,
        input_size) tensors.

    Examples:
        >>> views = simclr_transform()(Image.new("L", (28, 28)))
        >>> len(views), views[0].shape
        (2, torch.Size([1, 32, 32]))
    """
    kwargs: dict[str, Any] = {
        "input_size": input_size,
        "cj_strength": 0.5,
        "cj_hue": 0.0,
        "min_scale": 0.2,
        "random_gray_scale": 0.0 if in_channels == 1 else 0.2,
        "gaussian_blur": 0.0,
        "vf_prob": 0.0,
        "normalize": _normalize_for(in_channels),
    }
    kwargs.update(overrides)
    transform = SimCLRTransform(**kwargs)
    _prepend_to_views(transform, ToChannels(in_channels))
    return transform


def _prepend_to_views(transform: MultiViewTransform, step: Callable[[Any], Any]) -> None:
    # SimCLRTransform shares one view transform between its views; dedupe by id so the
    # step is inserted once per distinct Compose.
    seen: set[int] = set()
    for view in transform.transforms:
        compose = getattr(view, "transform", None)
        steps = getattr(compose, "transforms", None)
        if not isinstance(steps, list):
            raise TypeError(f"Cannot insert {step!r} into view transform {view!r}")
        if id(steps) not in seen:
            seen.add(id(steps))
            steps.insert(0, step)


def eval_transform(input_size: int = 32, in_channels: int = 1) -> T.Compose:
    """Deterministic transform for embedding and evaluation: resize, tensor, normalize.

    Args:
        input_size: Side of the output image in pixels.
        in_channels: Channels of the output, 1 or 3.

    Examples:
        >>> eval_transform()(Image.new("L", (28, 28))).shape
        torch.Size([1, 32, 32])
    """
    normalize = _normalize_for(in_channels)
    return T.Compose(
        [
            ToChannels(in_channels),
            T.Resize((input_size, input_size)),
            T.ToTensor(),
            T.Normalize(mean=normalize["mean"], std=normalize["std"]),
        ]
    )


# --------------------------------------------------------------------------- loaders


def make_loader(
    dataset: Dataset[Any],
    batch_size: int,
    *,
    shuffle: bool,
    num_workers: int = 0,
    drop_last: bool = False,
    seed: int = 0,
) -> DataLoader[Any]:
    """A ``torch.utils.data.DataLoader`` whose shuffling and worker seeds follow ``seed``.

    Examples:
        >>> dataset = resolve_dataset("digits", "train", eval_transform())
        >>> loader = make_loader(dataset, batch_size=64, shuffle=True)
        >>> images, labels = next(iter(loader))
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=generator,
        persistent_workers=num_workers > 0,
    )


# --------------------------------------------------------------------------- display


def images_for_display(
    dataset: Dataset[Any], indices: np.ndarray | Sequence[int], size: int = 64
) -> np.ndarray:
    """Returns the raw (untransformed) images at ``indices`` as a uint8 array.

    Args:
        dataset: An ``ArrayImageDataset``, an ``ImageFolder``, or a ``Subset`` of either.
        indices: Item indices into ``dataset``.
        size: Side to which ``ImageFolder`` images are resized (they can differ in size).

    Returns:
        (n, H, W) for a grayscale ``ArrayImageDataset``, else (n, H, W, 3).

    Examples:
        >>> dataset = resolve_dataset("digits", "test")
        >>> images_for_display(dataset, [0, 1]).shape
        (2, 8, 8)
    """
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    n = len(dataset)  # type: ignore[arg-type]
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"indices must be in [0, {n}), got min {idx.min()} max {idx.max()}")
    if isinstance(dataset, Subset):
        parent_idx = np.asarray(dataset.indices, dtype=np.int64)[idx]
        return images_for_display(dataset.dataset, parent_idx, size)
    if isinstance(dataset, ArrayImageDataset):
        return dataset.images[idx].copy()
    if isinstance(dataset, ImageFolder):
        out = np.zeros((idx.size, size, size, 3), dtype=np.uint8)
        for row, i in enumerate(idx):
            with Image.open(dataset.samples[int(i)][0]) as image:
                out[row] = np.asarray(image.convert("RGB").resize((size, size)))
        return out
    raise TypeError(
        f"images_for_display supports ArrayImageDataset, ImageFolder and Subset, "
        f"got {type(dataset).__name__}"
    )


__all__ = [
    "DIGITS_CLASSES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "GRAYSCALE_NORMALIZE",
    "ArrayImageDataset",
    "DatasetSpec",
    "ToChannels",
    "default_dataset_name",
    "eval_transform",
    "images_for_display",
    "labeled_subset",
    "load_digits_split",
    "load_fashion_mnist",
    "load_image_folder",
    "make_loader",
    "random_subset",
    "read_idx",
    "resolve_dataset",
    "simclr_transform",
]
