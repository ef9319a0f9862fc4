"""The images of one benchmark row: labeled training images, validation, kNN bank, test sets.

Every choice of images depends on the benchmark's ``data_seed`` only, so every method and every
training seed of a row trains on the same labeled images and is scored on the same validation,
bank and test images (the shifted test sets included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset, Subset

from benchlib.config import BenchmarkConfig, DataRow
from benchlib.long_tail import long_tailed_subset
from benchlib.shifts import ShiftedDataset
from lightly_grpo.data import (
    dataset_labels,
    eval_transform,
    labeled_subset,
    make_loader,
    posttrain_transform,
    random_subset,
    resolve_dataset,
    split_validation,
)


@dataclass
class RowData:
    """The datasets of one row (eval transform except ``train``).

    Attributes:
        train: Augmented labeled images (the training batches).
        labeled: The same images through the eval transform (criterion init, validation bank).
        validation: Held-out train-split images, never trained on (learning-rate selection and
            the per-epoch accuracy curve).
        bank: Train-split images whose embeddings are the kNN bank of the evaluation.
        test: The test images.
        shifted: Out-of-distribution versions of ``test`` by shift name.
        num_classes: Number of classes.
        class_counts: Labeled images per class.
    """

    train: Dataset[Any]
    labeled: Dataset[Any]
    validation: Dataset[Any]
    bank: Dataset[Any]
    test: Dataset[Any]
    shifted: dict[str, Dataset[Any]]
    num_classes: int
    class_counts: list[int]
    num_workers: int = 0

    def train_loader(self, batch_size: int, seed: int) -> DataLoader[Any]:
        """Shuffled training batches in an order fixed by the training ``seed``."""
        size = min(batch_size, len(self.train))  # type: ignore[arg-type]
        return make_loader(
            self.train,
            size,
            shuffle=True,
            drop_last=True,
            seed=seed,
            num_workers=self.num_workers,
        )


def labeled_indices(labels: np.ndarray, row: DataRow, data_seed: int, pool: np.ndarray) -> Any:
    """Indices of the row's labeled images among ``pool`` (long-tailed or a class share)."""
    if row.imbalance_ratio is not None:
        return long_tailed_subset(labels, row.imbalance_ratio, seed=data_seed, base=pool)
    return labeled_subset(labels, row.label_fraction, seed=data_seed, base=pool)


def row_data(cfg: BenchmarkConfig, row: DataRow) -> RowData:
    """Builds the datasets of ``row`` under the benchmark's protocol.

    The validation images are held out of the train split first (class-balanced,
    ``cfg.val_images``, at most a fifth of a small split); the labeled images are then drawn
    from the rest (restricted to ``row.pool_size`` random images when set).
    """
    seed, root = cfg.data_seed, cfg.data_root
    transform = eval_transform(cfg.input_size, 1)
    train_plain = resolve_dataset(row.dataset, "train", None, root=root, seed=seed)
    labels = dataset_labels(train_plain)
    val_size = min(cfg.val_images, len(labels) // 5)
    validation, pool = split_validation(labels, val_size, seed=seed)
    if row.pool_size is not None and row.pool_size < len(pool):
        pool = np.sort(pool[random_subset(len(pool), row.pool_size, seed)])
    labeled = labeled_indices(labels, row, seed, pool).tolist()
    train_eval = resolve_dataset(row.dataset, "train", transform, root=root, seed=seed)
    augment = posttrain_transform(cfg.augment, cfg.input_size, 1)
    test_plain = resolve_dataset(row.dataset, "test", None, root=root, seed=seed)
    test_index = random_subset(len(test_plain), cfg.test_images, seed + 1).tolist()
    bank_index = random_subset(len(labels), cfg.bank_images, seed + 2).tolist()
    shift_index = test_index[: cfg.shift_images]
    num_classes = int(labels.max()) + 1
    return RowData(
        train=Subset(resolve_dataset(row.dataset, "train", augment, root=root, seed=seed), labeled),
        labeled=Subset(train_eval, labeled),
        validation=Subset(train_eval, validation.tolist()),
        bank=Subset(train_eval, bank_index),
        test=Subset(
            resolve_dataset(row.dataset, "test", transform, root=root, seed=seed), test_index
        ),
        shifted={
            shift: ShiftedDataset(Subset(test_plain, shift_index), shift, transform=transform)
            for shift in row.shifts
        },
        num_classes=num_classes,
        class_counts=np.bincount(labels[labeled], minlength=num_classes).tolist(),
        num_workers=cfg.num_workers,
    )


__all__ = ["RowData", "labeled_indices", "row_data"]
