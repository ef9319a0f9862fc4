"""Seeded long-tailed subsets: class sizes that fall exponentially with the label id.

The long-tailed rows of the quality benchmark train on these (:mod:`benchlib.data`). Like
:mod:`lightly_grpo.data.splits`, every function returns sorted int64 indices into the full
``labels`` it was given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lightly_grpo.data.splits import _check_labels, _pool


def long_tailed_counts(class_sizes: Sequence[int], imbalance_ratio: float) -> list[int]:
    """Items per class of the exponential long-tailed profile of CIFAR-LT (Cao et al., 2019).

    With ``C`` classes ordered by label id (rank ``c = 0 .. C-1``), class ``c`` keeps
    ``n_c = max(1, round(n_max * imbalance_ratio ** (-c / (C - 1))))`` items, where
    ``n_max`` is the size of the *smallest* class, so that every class can supply its count.
    Class 0 keeps ``n_max`` items and the last class ``round(n_max / imbalance_ratio)``.
    A single class keeps all its items (there is no tail for the ratio to shape).

    Args:
        class_sizes: Items available per class, in label order.
        imbalance_ratio: ``n_0 / n_{C-1}``, finite and >= 1; 1 gives a balanced subset.

    Raises:
        ValueError: For a ratio below 1, NaN or infinite, or no classes.

    Examples:
        >>> long_tailed_counts([500, 600, 700], imbalance_ratio=100)
        [500, 50, 5]
    """
    ratio = float(imbalance_ratio)
    # Written so that NaN fails too.
    if not (math.isfinite(ratio) and ratio >= 1.0):
        raise ValueError(f"imbalance_ratio must be finite and >= 1, got {imbalance_ratio!r}")
    num_classes = len(class_sizes)
    if num_classes == 0:
        raise ValueError("class_sizes must not be empty")
    n_max = min(int(size) for size in class_sizes)
    if num_classes == 1:
        return [n_max]
    return [
        max(1, round(n_max * ratio ** (-rank / (num_classes - 1)))) for rank in range(num_classes)
    ]


def long_tailed_subset(
    labels: np.ndarray | Sequence[int],
    imbalance_ratio: float = 100.0,
    seed: int = 0,
    base: np.ndarray | Sequence[int] | None = None,
) -> np.ndarray:
    """A seeded long-tailed subset: class sizes fall exponentially with the label id.

    Class counts follow :func:`long_tailed_counts` over the classes present in the pool
    (``base``, or all items), ranked by label id; the head class is the lowest label id.
    Which items a class keeps is seeded and does not depend on the ratio, so for a fixed
    seed and pool a larger ratio picks a subset of a smaller one. A single-class pool is
    returned whole.

    Args:
        labels: Integer labels of the full dataset, shape (N,).
        imbalance_ratio: Size of the head class over that of the tail class, finite, >= 1.
        seed: Random seed.
        base: Optional indices into ``labels`` to pick from (e.g. to leave out validation
            items). None picks from all items.

    Returns:
        Sorted int64 indices into ``labels``.

    Raises:
        ValueError: For a bad ratio (see :func:`long_tailed_counts`), labels that are not a
            non-empty 1-D sequence, or a ``base`` that is empty, repeats indices or lies out
            of range.

    Examples:
        >>> labels = np.repeat([0, 1, 2], [10, 12, 15])
        >>> idx = long_tailed_subset(labels, imbalance_ratio=10, seed=0)
        >>> np.bincount(labels[idx]).tolist()
        [10, 3, 1]
    """
    labels_arr = _check_labels(labels)
    pool = _pool(labels_arr, base)
    pool_labels = labels_arr[pool]
    classes = np.unique(pool_labels)
    members = [pool[pool_labels == label] for label in classes]
    counts = long_tailed_counts([len(m) for m in members], imbalance_ratio)
    rng = np.random.default_rng(seed)
    chosen = [m[rng.permutation(len(m))[:count]] for m, count in zip(members, counts, strict=True)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


__all__ = ["long_tailed_counts", "long_tailed_subset"]
