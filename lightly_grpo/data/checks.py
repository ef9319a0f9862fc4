"""Checks that a training set can train at all, before any model is built.

A ``drop_last=True`` loader over fewer items than one batch yields no batch, and Lightning then
"trains" for zero steps without an error; a classifier objective needs two classes or more.
:func:`check_training_data` turns both into a ``ValueError`` with the numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset

from lightly_grpo.data.datasets import dataset_labels

# Beyond this many classes the error message gives the count, not the names.
_MAX_NAMED_CLASSES = 10


def _class_names(dataset: Dataset[Any]) -> list[str] | None:
    """``classes`` of the dataset, looked up through ``Subset`` wrappers (None if absent)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    classes = getattr(dataset, "classes", None)
    return None if classes is None else [str(c) for c in classes]


def check_training_data(
    dataset: Dataset[Any],
    batch_size: int,
    *,
    drop_last: bool,
    min_classes: int = 1,
    name: str = "training set",
) -> None:
    """Raises ``ValueError`` if ``dataset`` cannot give one training batch or has too few classes.

    Args:
        dataset: The items the training loader reads (a ``Subset`` is fine).
        batch_size: The loader's batch size, >= 1.
        drop_last: Whether the loader drops the last, smaller batch (training loaders do): then
            a dataset smaller than ``batch_size`` yields no batch at all.
        min_classes: Distinct labels needed (2 for a classifier objective). Labels are read with
            :func:`~lightly_grpo.data.datasets.dataset_labels`, without loading any image; with
            ``min_classes <= 1`` they are not read at all.
        name: What the messages call the dataset.

    Raises:
        ValueError: If ``batch_size < 1`` or ``min_classes < 0``; if the dataset is empty;
            if ``drop_last`` and it has fewer items than ``batch_size``; if it has fewer
            than ``min_classes`` distinct labels.

    Examples:
        >>> import torch
        >>> from lightly_grpo.data.datasets import ArrayImageDataset
        >>> dataset = ArrayImageDataset(np.zeros((60, 8, 8), dtype=np.uint8), [0] * 60)
        >>> check_training_data(dataset, 32, drop_last=True)
        >>> check_training_data(dataset, 256, drop_last=True)
        Traceback (most recent call last):
        ...
        ValueError: training set has 60 images, fewer than --batch-size 256; ...
        >>> check_training_data(dataset, 32, drop_last=True, min_classes=2)
        Traceback (most recent call last):
        ...
        ValueError: training set needs at least 2 classes, got 1 (class '0')
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if min_classes < 0:
        raise ValueError(f"min_classes must be >= 0, got {min_classes}")
    size = len(dataset)  # type: ignore[arg-type]
    if size == 0:
        raise ValueError(f"{name} is empty (0 images); nothing to train on")
    if drop_last and size < batch_size:
        raise ValueError(
            f"{name} has {size} images, fewer than --batch-size {batch_size}; lower the batch "
            f"size (the loader drops incomplete batches, so no step would run)"
        )
    if min_classes <= 1:
        return  # a non-empty dataset has at least one label; no need to read them
    present = np.unique(dataset_labels(dataset))
    if len(present) >= min_classes:
        return
    classes = _class_names(dataset)
    if len(present) > _MAX_NAMED_CLASSES:
        which = ""
    else:
        named = classes is not None and all(0 <= i < len(classes) for i in present)
        names = [repr(classes[i]) if named else str(int(i)) for i in present]  # type: ignore[index]
        if named:
            kind = "class" if len(names) == 1 else "classes"
        else:
            kind = "label" if len(names) == 1 else "labels"
        which = f" ({kind} {', '.join(names)})"
    raise ValueError(f"{name} needs at least {min_classes} classes, got {len(present)}{which}")


__all__ = ["check_training_data"]
