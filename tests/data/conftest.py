from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from lightly_grpo.data import FASHION_MNIST_DIR, ArrayImageDataset, load_digits_split

FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


@pytest.fixture
def fashion_mnist() -> None:
    """Skips the test unless Debian's Fashion-MNIST files are installed."""
    if not all((FASHION_MNIST_DIR / name).is_file() for name in FASHION_FILES):
        pytest.skip(
            f"Fashion-MNIST files not in {FASHION_MNIST_DIR} (apt install dataset-fashion-mnist)"
        )


def write_image_folder(root: Path, per_class: int = 3, size: int = 20) -> None:
    """Writes random RGB PNGs, ``per_class`` per class ``cat`` and ``dog``, of varying widths."""
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size + i, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")


@pytest.fixture
def image_folder_writer() -> Callable[..., None]:
    """:func:`write_image_folder`, for tests that need an ImageFolder on disk."""
    return write_image_folder


@pytest.fixture
def digit_dataset() -> Callable[..., ArrayImageDataset]:
    """Builds the digits train split with a given transform (None: PIL images)."""

    def build(transform: Callable[[Image.Image], Any] | None = None) -> ArrayImageDataset:
        images, labels = load_digits_split("train")
        return ArrayImageDataset(images, labels, transform)

    return build
