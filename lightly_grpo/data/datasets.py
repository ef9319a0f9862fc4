"""Offline image datasets: Fashion-MNIST IDX files, scikit-learn digits, image folders.

Real data that works offline: Debian's ``dataset-fashion-mnist`` (gz IDX files) and
scikit-learn's ``load_digits`` (inside the wheel). Any image directory laid out for
``torchvision.datasets.ImageFolder`` works too. :func:`resolve_dataset` turns a name or a
directory into one of them.

Image folders are scanned before training: files PIL cannot decode (zero bytes, garbage,
truncated) are skipped with a warning each, class directories without images keep their class
index, and an image that breaks after the scan raises a ``ValueError`` naming its file.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import warnings
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader

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
#: The names :func:`resolve_dataset` knows besides a directory.
DATASET_NAMES = ("default", "fashion-mnist", "digits")

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
#: File name endings an image folder reads (torchvision's ``IMG_EXTENSIONS``).
IMAGE_EXTENSIONS: tuple[str, ...] = tuple(IMG_EXTENSIONS)
# Skipped files named one warning each up to this many; the rest go to the log and to
# ``CheckedImageFolder.skipped`` (a folder of thousands of broken files would flood the console).
_MAX_FILE_WARNINGS = 20
# Below this many files a thread pool costs more than it saves (small PNGs decode in ~0.1 ms,
# mostly under the GIL); JPEG decoding releases the GIL, so large folders scan in parallel.
_PARALLEL_MIN_FILES = 64
_SCAN_WORKERS = min(8, os.cpu_count() or 1)
# path -> (size, mtime_ns, error or None): the chains resolve the same split several times
# (plain, eval and augmented views); an unchanged file is decoded once per process.
_scan_cache: dict[str, tuple[int, int, str | None]] = {}


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
        >>> images = read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")  # doctest: +SKIP
        >>> images.shape  # doctest: +SKIP
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
        >>> images, labels = load_fashion_mnist(split="test")  # doctest: +SKIP
        >>> images.shape, labels.shape  # doctest: +SKIP
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
        >>> dataset = ArrayImageDataset(images, labels)
        >>> image, label = dataset[0]
        >>> image.mode, image.size, label == int(labels[0])
        ('L', (8, 8), True)
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


def image_error(path: str | os.PathLike[str]) -> str | None:
    """Why PIL cannot decode the image at ``path`` as RGB, or ``None`` if it can.

    The whole image is decoded (``Image.verify`` misses truncated JPEGs), the same work
    torchvision's loader does during training, so a file that passes here loads there. A JPEG is
    decoded at 1/8 scale (``Image.draft``): every byte is still entropy-decoded, so truncation
    and corruption are caught, at about 2/3 of the full cost (measured: 28 px PNG ~0.1 ms,
    256 px JPEG ~0.8 ms, 1024 px JPEG 9.6 ms instead of 14 ms). Results are cached per path,
    size and modification time.

    Args:
        path: Image file.

    Returns:
        ``"<ErrorType>: <PIL message>"``, or ``None`` for a readable image.

    Examples:
        >>> import tempfile
        >>> bad = Path(tempfile.mkdtemp()) / "bad.png"
        >>> _ = bad.write_bytes(b"not an image")
        >>> image_error(bad)
        "UnidentifiedImageError: cannot identify image file '...bad.png'"
        >>> import shutil; shutil.rmtree(bad.parent)
    """
    key = os.path.abspath(path)
    try:
        stat = os.stat(key)
    except OSError as err:
        return f"{type(err).__name__}: {err}"
    cached = _scan_cache.get(key)
    if cached is not None and cached[:2] == (stat.st_size, stat.st_mtime_ns):
        return cached[2]
    error: str | None = None
    try:
        with Image.open(key) as image:
            image.draft(image.mode, (1, 1))  # JPEG only: decode at 1/8 scale; no-op otherwise
            image.load()
            if image.mode != "RGB":
                image.convert("RGB")  # the loader's conversion; some modes cannot convert
    except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        error = f"{type(err).__name__}: {err}"
    _scan_cache[key] = (stat.st_size, stat.st_mtime_ns, error)
    return error


def _image_errors(paths: Sequence[str]) -> list[str | None]:
    """:func:`image_error` of each path, in order; a thread pool for large folders."""
    if len(paths) < _PARALLEL_MIN_FILES or _SCAN_WORKERS < 2:
        return [image_error(path) for path in paths]
    size = math.ceil(len(paths) / (4 * _SCAN_WORKERS))  # a few chunks per thread, balanced
    chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
    with ThreadPoolExecutor(_SCAN_WORKERS) as pool:
        results = pool.map(lambda chunk: [image_error(path) for path in chunk], chunks)
        return [error for chunk_errors in results for error in chunk_errors]


def load_rgb_image(path: str) -> Any:
    """torchvision's ``default_loader`` (an RGB PIL image) with errors that name the file.

    Args:
        path: Image file.

    Raises:
        ValueError: ``cannot read image '<path>': <error>`` if the file is gone or cannot be
            decoded (for instance changed after the folder was scanned).

    Examples:
        >>> load_rgb_image("no/such/image.png")
        Traceback (most recent call last):
        ...
        ValueError: cannot read image 'no/such/image.png': FileNotFoundError: ...
    """
    try:
        return default_loader(path)
    except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        raise ValueError(f"cannot read image '{path}': {type(err).__name__}: {err}") from err


def _class_dirs(directory: str | os.PathLike[str]) -> list[str]:
    """Sorted class subfolder names, as ``ImageFolder`` finds them."""
    with os.scandir(directory) as entries:
        return sorted(entry.name for entry in entries if entry.is_dir())


class CheckedImageFolder(ImageFolder):
    """An ``ImageFolder`` that skips unreadable files and keeps empty classes.

    - Files with an image extension (``IMAGE_EXTENSIONS``) are decoded once
      (:func:`image_error`) and those PIL cannot read are left out through ImageFolder's
      ``is_valid_file`` hook: a ``UserWarning`` names each (path and PIL error) and one more gives
      the count. They are listed in ``skipped``.
    - A class directory without readable images keeps its class index (``allow_empty=True``), so
      a ``train/`` and ``test/`` with the same class folders agree on every label even when one
      of them has an empty folder; a ``UserWarning`` names the empty directories, which are
      listed in ``empty_classes``.
    - ``classes`` fixes the class list (for instance the ``train/`` classes for ``test/``): a
      listed class without a folder here counts as empty, a folder not listed is an error.
    - Items are read with :func:`load_rgb_image`: every image comes out RGB (grayscale, RGBA,
      palette) and a file that breaks after the scan raises ``ValueError`` naming it.

    Args:
        root: Directory with one subfolder of images per class.
        transform: Applied to each RGB PIL image.
        classes: Class names in label order; default: the sorted subfolder names.
        check_images: Decode every file up front and skip unreadable ones. ``False`` keeps
            every file with an image extension (an unreadable one fails when its item is read).

    Raises:
        ValueError: If ``root`` has no class subfolders, no readable image, or (with
            ``classes``) a subfolder that is not a listed class.

    Examples:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in ("cat", "dog"):
        ...     (root / name).mkdir()
        ...     Image.new("L", (8, 8)).save(root / name / "0.png")
        >>> _ = (root / "dog" / "1.png").write_bytes(b"")
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     dataset = CheckedImageFolder(root)
        >>> len(dataset), dataset.targets, [Path(path).name for path, _ in dataset.skipped]
        (2, [0, 1], ['1.png'])
        >>> dataset[0][0].mode
        'RGB'
        >>> import shutil; shutil.rmtree(root)
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        classes: Sequence[str] | None = None,
        check_images: bool = True,
    ) -> None:
        if classes is not None and not classes:
            raise ValueError("classes must name at least one class, got an empty list")
        self._fixed_classes = None if classes is None else list(classes)
        directory = os.path.expanduser(os.fspath(root))
        #: ``(path, error)`` of every file left out because PIL cannot decode it.
        self.skipped: list[tuple[str, str]] = []
        is_valid_file: Callable[[str], bool] | None = None
        num_candidates = 0
        if check_images:
            _, class_to_idx = self.find_classes(directory)
            candidates = [
                path
                for path, _ in self.make_dataset(
                    directory, class_to_idx, extensions=IMAGE_EXTENSIONS, allow_empty=True
                )
            ]
            num_candidates = len(candidates)
            errors = _image_errors(candidates)
            self.skipped = [
                (p, e) for p, e in zip(candidates, errors, strict=True) if e is not None
            ]
            readable = frozenset(p for p, e in zip(candidates, errors, strict=True) if e is None)
            # ImageFolder's own hook; a bound method of a frozenset keeps the dataset picklable
            # for DataLoader workers.
            is_valid_file = readable.__contains__
        super().__init__(
            directory,
            transform=transform,
            loader=load_rgb_image,
            is_valid_file=is_valid_file,
            allow_empty=True,
        )
        self._warn_skipped(directory, num_candidates)
        if not self.samples:
            if self.skipped:
                path, error = self.skipped[0]
                raise ValueError(
                    f"Image folder '{directory}' has no readable image: all "
                    f"{len(self.skipped)} image files are unreadable (first: '{path}': {error})"
                )
            raise ValueError(
                f"Image folder '{directory}' has no image files in its class subfolders "
                f"{self.classes} (extensions {', '.join(IMAGE_EXTENSIONS)})"
            )
        counts = np.bincount(np.asarray(self.targets, dtype=np.int64), minlength=len(self.classes))
        #: Class names without any (readable) image; they keep their index.
        self.empty_classes: list[str] = [
            c for c, n in zip(self.classes, counts, strict=True) if n == 0
        ]
        if self.empty_classes:
            dirs = ", ".join(f"'{os.path.join(directory, c)}'" for c in self.empty_classes)
            warnings.warn(
                f"Image folder '{directory}': no readable images for {len(self.empty_classes)} of "
                f"{len(self.classes)} classes ({dirs}); they keep their class index so that "
                "labels agree across splits, but have no items",
                UserWarning,
                stacklevel=3,
            )

    def find_classes(self, directory: str | os.PathLike[str]) -> tuple[list[str], dict[str, int]]:
        """The fixed ``classes`` if given (checked against the subfolders), else ImageFolder's."""
        if self._fixed_classes is None:
            return super().find_classes(directory)
        unknown = sorted(set(_class_dirs(directory)) - set(self._fixed_classes))
        if unknown:
            raise ValueError(
                f"Image folder '{directory}' has class folders {unknown} that are not among the "
                f"expected classes {self._fixed_classes}; their labels would be undefined"
            )
        return list(self._fixed_classes), {c: i for i, c in enumerate(self._fixed_classes)}

    def _warn_skipped(self, directory: str, num_candidates: int) -> None:
        for path, error in self.skipped[:_MAX_FILE_WARNINGS]:
            warnings.warn(f"Skipping unreadable image '{path}': {error}", UserWarning, stacklevel=4)
        for path, error in self.skipped[_MAX_FILE_WARNINGS:]:
            logger.warning("Skipping unreadable image '%s': %s", path, error)
        if self.skipped:
            more = len(self.skipped) - _MAX_FILE_WARNINGS
            rest = f" ({more} more are named in the log, all in .skipped)" if more > 0 else ""
            warnings.warn(
                f"Image folder '{directory}': skipped {len(self.skipped)} of {num_candidates} "
                f"image files that PIL cannot decode{rest}",
                UserWarning,
                stacklevel=4,
            )


def load_image_folder(
    path: str | os.PathLike[str],
    transform: Callable[[Image.Image], Any] | None = None,
    *,
    check_images: bool = True,
    classes: Sequence[str] | None = None,
) -> CheckedImageFolder:
    """Loads a directory of class subfolders as a :class:`CheckedImageFolder`.

    Unreadable files are skipped with a warning each, class folders without images keep their
    index (with a warning), every image comes out RGB, and an image that breaks later raises a
    ``ValueError`` naming its file; see :class:`CheckedImageFolder`.

    Args:
        path: Directory with one subfolder of images per class.
        transform: Applied to each RGB PIL image.
        check_images: Decode every file once now and skip the unreadable ones.
        classes: Class names in label order (default: the sorted subfolder names).

    Raises:
        FileNotFoundError: If ``path`` does not exist or is not a directory.
        ValueError: If it has no class subfolders or no readable images.

    Examples:
        >>> dataset = load_image_folder("my_images/")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"Image folder not found or not a directory: '{path}'")
    try:
        return CheckedImageFolder(path, transform, classes=classes, check_images=check_images)
    except FileNotFoundError as err:
        # torchvision raises FileNotFoundError for an existing directory without subfolders.
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
    check_images: bool = True,
) -> ArrayImageDataset | ImageFolder:
    """Turns a dataset name or a directory into a dataset.

    Args:
        name: ``"default"`` (Fashion-MNIST if installed, else digits), ``"fashion-mnist"``,
            ``"digits"``, or a directory for ``ImageFolder``. A directory with ``train/``
            and ``test/`` subfolders is split by them (both use the class list of ``train/``,
            so labels agree); otherwise both splits read the same directory. See
            :class:`CheckedImageFolder` for unreadable files and empty class folders.
        split: ``"train"`` or ``"test"``.
        transform: Applied to each PIL image.
        root: Directory of the Fashion-MNIST files (default ``FASHION_MNIST_DIR``).
        seed: Seed of the digits train/test split.
        check_images: For a directory, decode every image once and skip unreadable ones.

    Raises:
        ValueError: If ``split`` is unknown, or a directory has no readable image or a
            ``test/`` class folder that ``train/`` lacks.
        FileNotFoundError: If ``name`` is neither a known dataset nor an existing directory.

    Examples:
        >>> train = resolve_dataset("digits", "train")
        >>> test = resolve_dataset("digits", "test")
        >>> len(train) + len(test), train.classes[:3]
        (1797, ['0', '1', '2'])
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
            f"Unknown dataset {key!r}: not one of {', '.join(map(repr, DATASET_NAMES))} and "
            "not an existing directory"
        )
    classes: list[str] | None = None
    if (path / "train").is_dir() and (path / "test").is_dir():
        # The labels of both splits follow train/'s folders: a class folder missing from test/
        # must not shift the indices of the classes after it.
        classes = _class_dirs(path / "train") or None
        path = path / split
    else:
        logger.info(
            "'%s' has no train/ and test/ subfolders; split %r reads all of it", path, split
        )
    return load_image_folder(path, transform, check_images=check_images, classes=classes)


def dataset_labels(dataset: Dataset[Any]) -> np.ndarray:
    """The integer labels of every item, read without loading any image.

    Args:
        dataset: An ``ArrayImageDataset`` (``labels``), an ``ImageFolder`` (``targets``), or
            a ``Subset`` of either.

    Raises:
        ValueError: If the dataset exposes neither ``labels`` nor ``targets``.

    Examples:
        >>> dataset_labels(resolve_dataset("digits", "test")).shape
        (360,)
    """
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    for attr in ("labels", "targets"):
        if hasattr(dataset, attr):
            return np.asarray(getattr(dataset, attr), dtype=np.int64)
    raise ValueError(
        f"{type(dataset).__name__} has neither 'labels' nor 'targets'; cannot read its labels"
    )


__all__ = [
    "DATASET_NAMES",
    "DIGITS_CLASSES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "IMAGE_EXTENSIONS",
    "ArrayImageDataset",
    "CheckedImageFolder",
    "dataset_labels",
    "default_dataset_name",
    "image_error",
    "load_digits_split",
    "load_fashion_mnist",
    "load_image_folder",
    "load_rgb_image",
    "read_idx",
    "resolve_dataset",
]
