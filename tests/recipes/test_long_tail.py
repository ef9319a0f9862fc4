from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from benchlib.long_tail import long_tailed_counts, long_tailed_subset

# --------------------------------------------------------------------------- long_tailed_subset


def test_long_tailed_subset_follows_the_exponential_profile() -> None:
    labels = np.repeat(np.arange(5), [120, 100, 150, 110, 130])
    idx = long_tailed_subset(labels, imbalance_ratio=10.0, seed=0)
    counts = np.bincount(labels[idx], minlength=5)
    # n_c = round(100 * 10 ** (-c / 4)) with n_max = 100, the smallest class.
    np.testing.assert_array_equal(counts, [100, 56, 32, 18, 10])
    assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)
    assert counts.tolist() == long_tailed_counts([120, 100, 150, 110, 130], 10.0)


def test_long_tailed_subset_ratio_one_is_balanced_and_large_ratios_floor_at_one() -> None:
    labels = np.repeat(np.arange(4), [30, 20, 25, 40])
    balanced = long_tailed_subset(labels, imbalance_ratio=1.0)
    np.testing.assert_array_equal(np.bincount(labels[balanced]), [20, 20, 20, 20])
    steep = long_tailed_subset(labels, imbalance_ratio=1000.0)
    np.testing.assert_array_equal(np.bincount(labels[steep]), [20, 2, 1, 1])


def test_long_tailed_subset_is_seeded_and_nested_across_ratios() -> None:
    labels = np.repeat(np.arange(3), 50)
    idx = long_tailed_subset(labels, 5.0, seed=3)
    np.testing.assert_array_equal(idx, long_tailed_subset(labels, 5.0, seed=3))
    assert not np.array_equal(idx, long_tailed_subset(labels, 5.0, seed=4))
    assert set(long_tailed_subset(labels, 25.0, seed=3).tolist()) <= set(idx.tolist())


def test_long_tailed_subset_respects_base_and_ranks_label_ids() -> None:
    labels = np.repeat([7, 3, 9], [40, 40, 40])  # label ids neither contiguous nor in order
    base = np.flatnonzero(np.arange(120) % 4 != 0)  # 30 per class
    idx = long_tailed_subset(labels, 9.0, seed=0, base=base)
    assert set(idx.tolist()) <= set(base.tolist())
    counts = Counter(labels[idx].tolist())
    # Head is the lowest label id (3), tail the highest (9): 30, round(30 / 3), round(30 / 9).
    assert counts == {3: 30, 7: 10, 9: 3}


def test_long_tailed_subset_single_class_returns_the_whole_pool() -> None:
    np.testing.assert_array_equal(long_tailed_subset([4, 4, 4], 100.0), [0, 1, 2])
    np.testing.assert_array_equal(long_tailed_subset([4, 4, 4, 1], 100.0, base=[0, 2]), [0, 2])


@pytest.mark.parametrize("ratio", [0.5, 0.0, -3.0, float("nan"), float("inf")])
def test_long_tailed_subset_bad_ratio(ratio: float) -> None:
    with pytest.raises(ValueError, match="imbalance_ratio"):
        long_tailed_subset([0, 1, 1], ratio)


def test_long_tailed_subset_bad_labels() -> None:
    with pytest.raises(ValueError, match="1-D"):
        long_tailed_subset(np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="1-D"):
        long_tailed_subset([])
