"""Datasets, lightly transforms and data loaders for GRPO-RM post-training.

One module per concern, everything re-exported here:

- :mod:`~lightly_grpo.data.datasets`: Fashion-MNIST IDX files, scikit-learn digits, image folders,
  and :func:`resolve_dataset`, which turns a name or a directory into one of them;
- :mod:`~lightly_grpo.data.transforms`: lightly's SimCLR views, the eval transform, the
  post-training augmentation and the normalisation statistics;
- :mod:`~lightly_grpo.data.splits`: seeded labeled shares, validation splits and random
  subsets;
- :mod:`~lightly_grpo.data.loaders`: seeded ``DataLoader`` and raw images for display;
- :mod:`~lightly_grpo.data.config`: the :class:`DataConfig` dataclass.

Items follow lightly's batch format: a transform that returns a list of views (such as
``lightly.transforms.SimCLRTransform``) makes each item ``(list[Tensor], int)``, which the
default collate function turns into ``(list[Tensor of shape (B, C, H, W)], Tensor of shape (B,))``.

Examples:
    >>> from lightly_grpo.data import eval_transform, make_loader, resolve_dataset
    >>> dataset = resolve_dataset("digits", "test", eval_transform(16))
    >>> images, labels = next(iter(make_loader(dataset, batch_size=8, shuffle=False)))
    >>> images.shape, labels.shape
    (torch.Size([8, 1, 16, 16]), torch.Size([8]))
"""

from __future__ import annotations

from lightly_grpo.data.checks import check_training_data
from lightly_grpo.data.config import DataConfig
from lightly_grpo.data.datasets import (
    DATASET_NAMES,
    DIGITS_CLASSES,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    IMAGE_EXTENSIONS,
    ArrayImageDataset,
    CheckedImageFolder,
    dataset_labels,
    default_dataset_name,
    image_error,
    load_digits_split,
    load_fashion_mnist,
    load_image_folder,
    load_rgb_image,
    read_idx,
    resolve_dataset,
)
from lightly_grpo.data.indexed import IndexedDataset
from lightly_grpo.data.loaders import EpochShuffleSampler, images_for_display, make_loader
from lightly_grpo.data.neighbor_sampler import NeighborBatchSampler, reference_neighbors
from lightly_grpo.data.splits import (
    labeled_subset,
    random_subset,
    split_validation,
    subset,
)
from lightly_grpo.data.transforms import (
    GRAYSCALE_NORMALIZE,
    POSTTRAIN_AUGMENTATIONS,
    channel_step,
    eval_transform,
    normalize_stats,
    posttrain_transform,
    simclr_transform,
    to_rgb,
)

__all__ = [
    "EpochShuffleSampler",
    "IndexedDataset",
    "NeighborBatchSampler",
    "reference_neighbors",
    "DATASET_NAMES",
    "DIGITS_CLASSES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "GRAYSCALE_NORMALIZE",
    "IMAGE_EXTENSIONS",
    "POSTTRAIN_AUGMENTATIONS",
    "ArrayImageDataset",
    "CheckedImageFolder",
    "DataConfig",
    "channel_step",
    "check_training_data",
    "dataset_labels",
    "default_dataset_name",
    "eval_transform",
    "image_error",
    "images_for_display",
    "labeled_subset",
    "load_digits_split",
    "load_fashion_mnist",
    "load_image_folder",
    "load_rgb_image",
    "make_loader",
    "normalize_stats",
    "posttrain_transform",
    "random_subset",
    "read_idx",
    "resolve_dataset",
    "simclr_transform",
    "split_validation",
    "subset",
    "to_rgb",
]
