from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightly_grpo.data import (
    ArrayImageDataset,
    eval_transform,
    images_for_display,
    load_image_folder,
    make_loader,
    simclr_transform,
)
from lightly_grpo.embedding import unpack_batch


def test_loader_gives_lightly_batch_format(digit_dataset: Callable[..., ArrayImageDataset]) -> None:
    dataset = digit_dataset(simclr_transform(input_size=16))
    loader = make_loader(dataset, batch_size=8, shuffle=True, seed=0)
    batch = next(iter(loader))
    views, labels = batch
    assert len(views) == 2 and views[0].shape == (8, 1, 16, 16)
    assert labels.shape == (8,) and labels.dtype == torch.int64
    # The batch is what the training code's unpacking expects.
    images, repeated = unpack_batch(batch)
    assert images.shape == (16, 1, 16, 16) and repeated is not None
    assert torch.equal(repeated, labels.repeat(2))
    # Seeded shuffling: same seed, same order; different seed, different order.
    plain = digit_dataset(eval_transform(input_size=8))

    def first_labels(seed: int) -> list[int]:
        batch = next(iter(make_loader(plain, batch_size=64, shuffle=True, seed=seed)))
        return [int(y) for y in batch[1]]

    assert first_labels(5) == first_labels(5)
    assert first_labels(5) != first_labels(6)


def test_make_loader_rejects_bad_sizes(digit_dataset: Callable[..., ArrayImageDataset]) -> None:
    dataset = digit_dataset()
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(dataset, batch_size=0, shuffle=False)
    with pytest.raises(ValueError, match="num_workers"):
        make_loader(dataset, batch_size=2, shuffle=False, num_workers=-1)


def test_images_for_display_array_and_subset(
    digit_dataset: Callable[..., ArrayImageDataset],
) -> None:
    dataset = digit_dataset(eval_transform())
    shown = images_for_display(dataset, [4, 2])
    np.testing.assert_array_equal(shown, dataset.images[[4, 2]])
    subset = torch.utils.data.Subset(dataset, [10, 20, 30])
    np.testing.assert_array_equal(images_for_display(subset, [2]), dataset.images[[30]])
    with pytest.raises(ValueError, match="indices"):
        images_for_display(dataset, [len(dataset)])


def test_images_for_display_image_folder(
    tmp_path: Path, image_folder_writer: Callable[..., None]
) -> None:
    image_folder_writer(tmp_path)
    dataset = load_image_folder(tmp_path, transform=simclr_transform(input_size=16))
    shown = images_for_display(dataset, [0, 5])
    assert shown.shape == (2, 64, 64, 3) and shown.dtype == np.uint8
    first = np.asarray(Image.open(dataset.samples[0][0]).convert("RGB").resize((64, 64)))
    np.testing.assert_array_equal(shown[0], first)
