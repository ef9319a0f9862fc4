"""Seeded data loaders, and the raw images of a dataset for display."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torchvision.datasets import ImageFolder

from lightly_grpo.data.datasets import ArrayImageDataset, load_rgb_image


class EpochShuffleSampler(Sampler[int]):
    """A random order per epoch that depends only on ``seed`` and the epoch number.

    ``DataLoader(shuffle=True, generator=g)`` draws each epoch's order from ``g``, so a run
    resumed at epoch e from a checkpoint would replay epoch 0's order. This sampler is seeded by
    ``seed + epoch`` instead: Lightning calls :meth:`set_epoch` before every epoch (as for
    ``DistributedSampler``), so an interrupted and resumed run sees the same batches as an
    uninterrupted one. Without ``set_epoch`` calls (a plain loop) the epoch advances by itself.

    Args:
        num_items: Dataset length.
        seed: Seed of every epoch's permutation.

    Examples:
        >>> sampler = EpochShuffleSampler(5, seed=0)
        >>> sampler.set_epoch(3)
        >>> list(sampler) == list(sampler.__class__(5, seed=3))
        True
    """

    def __init__(self, num_items: int, seed: int = 0) -> None:
        if num_items < 0:
            raise ValueError(f"num_items must be >= 0, got {num_items}")
        self.num_items = num_items
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_items

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_items, generator=generator).tolist()
        self.epoch += 1  # a plain loop gets a new order next time; Lightning sets it anyway
        return iter(order)


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

    Args:
        dataset: Items in lightly's format, ``(image or list of views, label)``.
        batch_size: Items per batch, >= 1.
        shuffle: Reshuffle every epoch, in an order fixed by ``seed`` and the epoch number
            (:class:`EpochShuffleSampler`: a resumed run replays the same batches).
        num_workers: Loader processes; workers persist between epochs when > 0.
        drop_last: Drop the last, smaller batch. A dataset smaller than ``batch_size`` then
            gives no batch at all: a ``UserWarning`` says so (see
            :func:`~lightly_grpo.data.checks.check_training_data` to make it an error).
        seed: Seed of the shuffling and of the workers' base seed.

    Raises:
        ValueError: For ``batch_size < 1`` or ``num_workers < 0``.

    Examples:
        >>> dataset = [(torch.zeros(1, 4, 4), i % 2) for i in range(10)]
        >>> images, labels = next(iter(make_loader(dataset, batch_size=4, shuffle=True)))
        >>> images.shape, labels.shape
        (torch.Size([4, 1, 4, 4]), torch.Size([4]))
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    size = len(dataset)  # type: ignore[arg-type]
    if drop_last and size < batch_size:
        # A warning, not an error: some callers build loaders they never iterate. Training
        # code should call check_training_data, which raises.
        warnings.warn(
            f"make_loader: {size} items with batch_size {batch_size} and drop_last=True give "
            "no batch at all; lower the batch size",
            UserWarning,
            stacklevel=2,
        )
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochShuffleSampler(size, seed) if shuffle else None,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=generator,
        persistent_workers=num_workers > 0,
    )


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

    Raises:
        ValueError: For an index out of range, or an ``ImageFolder`` file that cannot be read
            (the message names the file).

    Examples:
        >>> dataset = ArrayImageDataset(np.zeros((3, 8, 8), dtype=np.uint8), [0, 1, 2])
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
            # load_rgb_image: a file that broke since the folder was scanned raises a
            # ValueError naming it, not PIL's bare traceback.
            image = load_rgb_image(dataset.samples[int(i)][0])
            out[row] = np.asarray(image.resize((size, size)))
        return out
    raise TypeError(
        f"images_for_display supports ArrayImageDataset, ImageFolder and Subset, "
        f"got {type(dataset).__name__}"
    )


__all__ = ["images_for_display", "make_loader"]
