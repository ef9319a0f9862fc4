from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from torch.utils.data import Subset

from lightly_grpo.data import labeled_subset, random_subset, subset


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
