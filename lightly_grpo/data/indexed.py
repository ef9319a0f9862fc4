"""A dataset wrapper whose items carry their own index: ``(views, label, index)``."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

__all__ = ["IndexedDataset"]


class IndexedDataset(Dataset[tuple[Any, Any, int]]):
    """Returns ``(image, label, index)`` for a dataset of ``(image, label, ...)`` items.

    Output sets that look items up in a table built from the training set (the neighbour table
    of :class:`~lightly_grpo.output_sets.NeighborOutputSet`) need the dataset index of every
    image of a batch. lightly's own ``LightlyDataset`` puts the file name in that slot; wrap it
    (or any dataset) in this class instead.

    Args:
        dataset: Any map-style dataset whose items are ``(image, label, ...)`` or a bare image
            (the label is then -1).

    Examples:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> data = IndexedDataset(TensorDataset(torch.zeros(3, 2), torch.tensor([5, 6, 7])))
        >>> image, label, index = data[2]
        >>> int(label), index
        (7, 2)
    """

    def __init__(self, dataset: Dataset[Any]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        item = self.dataset[index]
        if isinstance(item, (tuple, list)):
            return item[0], item[1] if len(item) > 1 else -1, index
        return item, -1, index
