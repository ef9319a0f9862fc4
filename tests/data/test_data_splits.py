from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from torch.utils.data import Subset

from lightly_grpo.data import (
    labeled_subset,
    random_subset,
    split_validation,
    subset,
)


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


def test_subset_is_seeded_and_keeps_small_datasets_whole() -> None:
    items: Any = list(range(100, 120))  # a list is a map-style dataset at run time
    small: Any = subset(items, 5, seed=0)
    assert isinstance(small, Subset) and len(small) == 5
    picked = [small[i] for i in range(5)]
    assert picked == sorted(picked) and set(picked) <= set(items)
    assert picked == [subset(items, 5, seed=0)[i] for i in range(5)]
    assert picked != [subset(items, 5, seed=1)[i] for i in range(5)]
    assert subset(items, None) is items and subset(items, 20) is items
    with pytest.raises(ValueError, match="-2"):
        subset(items, -2)


# --------------------------------------------------------------------------- labeled_subset(base=)


def test_labeled_subset_with_base_picks_per_class_of_the_base() -> None:
    labels = np.repeat(np.arange(2), [100, 100])
    # The base holds 40 items of class 0 and 20 of class 1.
    base = np.concatenate([np.arange(10, 50), np.arange(150, 170)])
    idx = labeled_subset(labels, 0.25, seed=1, base=base)
    assert set(idx.tolist()) <= set(base.tolist())
    np.testing.assert_array_equal(np.bincount(labels[idx], minlength=2), [10, 5])
    assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, labeled_subset(labels, 0.25, seed=1, base=base[::-1]))
    assert set(idx.tolist()) <= set(labeled_subset(labels, 0.5, seed=1, base=base).tolist())
    # A base of every index reproduces the default exactly.
    np.testing.assert_array_equal(
        labeled_subset(labels, 0.3, seed=2, base=np.arange(200)), labeled_subset(labels, 0.3, 2)
    )


@pytest.mark.parametrize(
    ("base", "match"),
    [([], "non-empty"), ([0, 0, 1], "repeat"), ([0, 5], r"\[0, 5\)"), ([0.5], "integer")],
)
def test_labeled_subset_bad_base(base: list[float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        labeled_subset([0, 0, 1, 1, 1], 0.5, base=np.asarray(base))


# --------------------------------------------------------------------------- split_validation


def test_split_validation_is_balanced_disjoint_and_complete() -> None:
    labels = np.repeat(np.arange(4), [50, 40, 30, 10])
    val, pool = split_validation(labels, 30, seed=0)
    # 30 // 4 = 7 per class, the remainder of 2 to the lowest label ids.
    np.testing.assert_array_equal(np.bincount(labels[val], minlength=4), [8, 8, 7, 7])
    assert len(val) == 30 and len(pool) == len(labels) - 30
    assert not set(val.tolist()) & set(pool.tolist())
    np.testing.assert_array_equal(np.sort(np.concatenate([val, pool])), np.arange(len(labels)))
    for part in (val, pool):
        assert part.dtype == np.int64 and np.all(np.diff(part) > 0)
    np.testing.assert_array_equal(val, split_validation(labels, 30, seed=0)[0])
    assert not np.array_equal(val, split_validation(labels, 30, seed=1)[0])


def test_split_validation_small_class_gives_what_it_can_and_keeps_one() -> None:
    labels = np.repeat(np.arange(4), [50, 40, 30, 5])
    val, pool = split_validation(labels, 40, seed=0)
    # Class 3 can spare 4 of its 5 items; the other classes share the other 36.
    np.testing.assert_array_equal(np.bincount(labels[val], minlength=4), [12, 12, 12, 4])
    np.testing.assert_array_equal(np.bincount(labels[pool], minlength=4), [38, 28, 18, 1])
    # The largest size that leaves every class a training item.
    val, pool = split_validation(labels, len(labels) - 4, seed=0)
    np.testing.assert_array_equal(np.bincount(labels[pool], minlength=4), [1, 1, 1, 1])


def test_split_validation_feeds_labeled_subset() -> None:
    labels = np.repeat(np.arange(3), 40)
    val, pool = split_validation(labels, 15, seed=0)
    train = labeled_subset(labels, 0.2, seed=0, base=pool)
    assert not set(train.tolist()) & set(val.tolist())
    np.testing.assert_array_equal(np.bincount(labels[train]), [7, 7, 7])  # round(0.2 * 35)


def test_split_validation_size_zero_and_bad_sizes() -> None:
    labels = np.repeat(np.arange(3), [4, 4, 2])
    val, pool = split_validation(labels, 0)
    assert val.size == 0 and val.dtype == np.int64
    np.testing.assert_array_equal(pool, np.arange(10))
    for size in (-1, 10, 11):
        with pytest.raises(ValueError, match=str(size)):
            split_validation(labels, size)
    with pytest.raises(ValueError, match="without training items"):
        split_validation(labels, 8)
