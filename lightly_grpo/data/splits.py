"""Seeded subsets: class-balanced labeled shares, validation splits, random samples and smaller
datasets.

Every function here returns sorted int64 indices into the full ``labels`` it was given, so
its result can index ``labels`` directly or build a ``torch.utils.data.Subset``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
from torch.utils.data import Dataset, Subset

_Item = TypeVar("_Item")


def _check_labels(labels: np.ndarray | Sequence[int]) -> np.ndarray:
    labels_arr = np.asarray(labels)
    if labels_arr.ndim != 1 or labels_arr.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D sequence, got shape {labels_arr.shape}")
    return labels_arr


def _pool(labels_arr: np.ndarray, base: np.ndarray | Sequence[int] | None) -> np.ndarray:
    """The sorted indices to pick from: all of ``labels_arr``, or the validated ``base``."""
    if base is None:
        return np.arange(len(labels_arr), dtype=np.int64)
    base_arr = np.asarray(base)
    if base_arr.ndim != 1 or base_arr.size == 0:
        raise ValueError(f"base must be a non-empty 1-D index array, got shape {base_arr.shape}")
    if not np.issubdtype(base_arr.dtype, np.integer):
        raise ValueError(f"base must hold integer indices, got dtype {base_arr.dtype}")
    if base_arr.min() < 0 or base_arr.max() >= len(labels_arr):
        raise ValueError(
            f"base indices must lie in [0, {len(labels_arr)}), got range "
            f"[{base_arr.min()}, {base_arr.max()}]"
        )
    pool = np.unique(base_arr).astype(np.int64)
    if len(pool) != len(base_arr):
        raise ValueError(f"base must not repeat indices, got {len(base_arr) - len(pool)} repeats")
    return pool


def labeled_subset(
    labels: np.ndarray | Sequence[int],
    fraction: float,
    seed: int = 0,
    base: np.ndarray | Sequence[int] | None = None,
) -> np.ndarray:
    """Picks a class-balanced, seeded share of the items (e.g. "10% of the labels").

    Each class keeps ``max(1, round(fraction * class_size))`` items, where ``class_size``
    counts the class's items in the pool (``base``, or all items). For a fixed seed and pool
    the subsets are nested: a smaller fraction picks a subset of a larger one.

    Args:
        labels: Integer labels of the full dataset, shape (N,).
        fraction: Share of each class to keep, in (0, 1].
        seed: Random seed.
        base: Optional indices into ``labels`` to pick from (e.g. the training pool left by
            :func:`split_validation`); classes absent from it are skipped. None picks from
            all items, exactly as without this argument.

    Returns:
        Sorted int64 indices into ``labels`` (not positions in ``base``).

    Raises:
        ValueError: For a fraction outside (0, 1] or NaN, labels that are not a non-empty 1-D
            sequence, or a ``base`` that is empty, repeats indices or lies out of range.

    Examples:
        >>> idx = labeled_subset([0, 0, 0, 0, 1, 1, 1, 1], fraction=0.5, seed=0)
        >>> len(idx)
        4
        >>> labeled_subset([0, 0, 0, 0, 1, 1, 1, 1], fraction=0.5, base=[0, 1, 4, 5]).tolist()
        [0, 4]
    """
    # Written so that NaN fails too.
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    labels_arr = _check_labels(labels)
    pool = _pool(labels_arr, base)
    pool_labels = labels_arr[pool]
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(pool_labels):
        members = pool[pool_labels == label]
        # The permutation does not depend on `fraction`, which makes subsets nested.
        order = rng.permutation(len(members))
        keep = max(1, round(fraction * len(members)))
        chosen.append(members[order[:keep]])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _balanced_counts(capacities: np.ndarray, size: int) -> np.ndarray:
    """Spreads ``size`` items over classes as evenly as ``capacities`` allow.

    Classes that cannot supply their equal share give all they have and the others take the
    rest; a remainder smaller than the number of open classes goes one each to the lowest
    label ids.
    """
    counts = np.zeros_like(capacities)
    remaining = size
    while remaining > 0:
        open_classes = np.flatnonzero(counts < capacities)
        share = remaining // len(open_classes)
        if share == 0:
            counts[open_classes[:remaining]] += 1
            break
        add = np.minimum(share, capacities[open_classes] - counts[open_classes])
        counts[open_classes] += add
        remaining -= int(add.sum())
    return counts


def split_validation(
    labels: np.ndarray | Sequence[int], size: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Splits off a class-balanced, seeded validation set of ``size`` items.

    Take it from the *training* split, then pick labeled or long-tailed training items from
    the returned pool (``base=``), so validation never overlaps training. Every class gets
    ``size // C`` items where it can (remainder to the lowest label ids; a class too small
    for its share gives what it can and the others make up the difference), and every class
    keeps at least one item in the training pool.

    Args:
        labels: Integer labels of the training split, shape (N,).
        size: Validation items, ``0 <= size <= N - C`` for ``C`` classes (so ``< N``).
        seed: Random seed.

    Returns:
        ``(validation, train_pool)``: disjoint, sorted int64 indices into ``labels`` that
        together cover all of it.

    Raises:
        ValueError: For a negative ``size``, one of ``N`` or more, one that would empty a
            class of the training pool, or labels that are not a non-empty 1-D sequence.

    Examples:
        >>> labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
        >>> val, pool = split_validation(labels, size=3, seed=0)
        >>> labels[val].tolist(), len(pool)
        ([0, 1, 2], 6)
    """
    labels_arr = _check_labels(labels)
    size = int(size)
    if size < 0 or size >= len(labels_arr):
        raise ValueError(f"size must be in [0, {len(labels_arr)}), got {size}")
    classes, inverse = np.unique(labels_arr, return_inverse=True)
    # One item per class stays in the training pool so no class vanishes from training.
    capacities = np.bincount(inverse, minlength=len(classes)) - 1
    if size > capacities.sum():
        raise ValueError(
            f"size {size} would leave a class without training items; at most "
            f"{int(capacities.sum())} of {len(labels_arr)} items ({len(classes)} classes) fit"
        )
    counts = _balanced_counts(capacities, size)
    rng = np.random.default_rng(seed)
    chosen = [np.zeros(0, dtype=np.int64)]
    for cls, count in enumerate(counts):
        members = np.flatnonzero(inverse == cls)
        chosen.append(members[rng.permutation(len(members))[:count]])
    validation = np.sort(np.concatenate(chosen)).astype(np.int64)
    mask = np.ones(len(labels_arr), dtype=bool)
    mask[validation] = False
    return validation, np.flatnonzero(mask).astype(np.int64)


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


__all__ = [
    "labeled_subset",
    "random_subset",
    "split_validation",
    "subset",
]
