"""Seeded subsets: a class-balanced labeled share, a random sample, a smaller dataset."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
from torch.utils.data import Dataset, Subset

_Item = TypeVar("_Item")


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


def subset(dataset: Dataset[_Item], size: int | None, seed: int = 0) -> Dataset[_Item]:
    """A seeded random ``Subset`` of ``size`` items, or ``dataset`` itself if it is not larger.

    Args:
        dataset: Any sized dataset.
        size: Number of items to keep; None keeps all.
        seed: Random seed (see :func:`random_subset`).

    Examples:
        >>> data = list(range(10))
        >>> len(subset(data, 3)), subset(data, None) is data, subset(data, 50) is data
        (3, True, True)
    """
    total = len(dataset)  # type: ignore[arg-type]
    if size is None or size >= total:
        return dataset
    return Subset(dataset, random_subset(total, size, seed).tolist())


__all__ = ["labeled_subset", "random_subset", "subset"]
