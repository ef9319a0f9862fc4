from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from lightly_grpo.data import (
    GRAYSCALE_NORMALIZE,
    ArrayImageDataset,
    channel_step,
    eval_transform,
    load_fashion_mnist,
    load_image_folder,
    normalize_stats,
    posttrain_transform,
    simclr_transform,
    to_rgb,
)


def _rgb_image(seed: int = 0, size: int = 28) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


# --------------------------------------------------------------------------- normalisation


def test_normalize_stats_repeat_the_grayscale_statistics() -> None:
    assert normalize_stats(1) == GRAYSCALE_NORMALIZE
    three = normalize_stats(3)
    assert three["mean"] == GRAYSCALE_NORMALIZE["mean"] * 3
    assert three["std"] == GRAYSCALE_NORMALIZE["std"] * 3
    # A fresh dict each call: a caller mutating it must not change the constant.
    three["mean"][0] = 99.0
    assert normalize_stats(3)["mean"][0] == GRAYSCALE_NORMALIZE["mean"][0]
    with pytest.raises(ValueError, match="2"):
        normalize_stats(2)


def test_every_transform_normalizes_with_the_same_statistics() -> None:
    # A uniform image has no crop/flip/jitter effect on its value, so all three transforms must
    # map pixel value v to (v / 255 - mean) / std.
    image = Image.new("L", (28, 28), color=200)
    expected = (200 / 255 - GRAYSCALE_NORMALIZE["mean"][0]) / GRAYSCALE_NORMALIZE["std"][0]
    outputs = [
        eval_transform(16)(image),
        posttrain_transform("light", 16)(image),
        simclr_transform(16, cj_prob=0.0)(image)[0],
    ]
    for out in outputs:
        torch.testing.assert_close(out, torch.full((1, 16, 16), expected), atol=1e-5, rtol=0)


def test_eval_transform_normalizes_fashion_mnist_to_zero_mean_unit_std(
    fashion_mnist: None,
) -> None:
    images, labels = load_fashion_mnist(split="train")
    dataset = ArrayImageDataset(images[:2000], labels[:2000], eval_transform(input_size=28))
    batch = torch.stack([dataset[i][0] for i in range(len(dataset))])
    assert abs(batch.mean().item()) < 0.05
    assert abs(batch.std().item() - 1.0) < 0.05


# --------------------------------------------------------------------------- channels


def test_rgb_stays_rgb_and_gray_becomes_three_equal_channels() -> None:
    rgb = _rgb_image()
    assert channel_step(3)(rgb) is rgb
    out = eval_transform(28, in_channels=3)(rgb)
    stats = normalize_stats(3)
    raw = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float() / 255
    expected = (raw - torch.tensor(stats["mean"]).view(3, 1, 1)) / torch.tensor(stats["std"]).view(
        3, 1, 1
    )
    torch.testing.assert_close(out, expected)
    assert not torch.equal(out[0], out[1])  # the colour survived

    gray = rgb.convert("L")
    assert to_rgb(gray).mode == "RGB"
    three = eval_transform(28, in_channels=3)(gray)
    assert three.shape == (3, 28, 28)
    assert torch.equal(three[0], three[1]) and torch.equal(three[1], three[2])
    torch.testing.assert_close(three[:1], eval_transform(28, in_channels=1)(gray))


def test_rgb_to_one_channel_uses_luma() -> None:
    rgb = _rgb_image(1)
    out = channel_step(1)(rgb)
    assert out.mode == "L"
    np.testing.assert_array_equal(np.asarray(out), np.asarray(rgb.convert("L")))
    with pytest.raises(ValueError, match="2"):
        channel_step(2)


def test_simclr_transform_channels_for_rgb_and_grayscale_inputs() -> None:
    torch.manual_seed(0)
    rgb = _rgb_image()
    gray = rgb.convert("L")
    one: Any = simclr_transform(in_channels=1)
    three: Any = simclr_transform(in_channels=3)
    # Many draws so that the random color jitter / grayscale branches are all exercised.
    for _ in range(30):
        assert all(v.shape == (1, 32, 32) for v in one(rgb) + one(gray))
        assert all(v.shape == (3, 32, 32) for v in three(rgb) + three(gray))


def test_image_folder_rgb_images_through_three_channel_transform(
    tmp_path: Path, image_folder_writer: Callable[..., None]
) -> None:
    image_folder_writer(tmp_path)
    dataset = load_image_folder(tmp_path, transform=eval_transform(16, in_channels=3))
    image, _ = dataset[0]
    assert image.shape == (3, 16, 16) and not torch.equal(image[0], image[2])


@pytest.mark.parametrize("in_channels", [1, 3])
def test_transforms_pickle_for_dataloader_workers(in_channels: int) -> None:
    # Worker processes started with "spawn" receive the dataset, transform included, by pickle.
    image = _rgb_image(2)
    for transform in (
        eval_transform(16, in_channels),
        posttrain_transform("light", 16, in_channels),
        simclr_transform(16, in_channels),
    ):
        clone = pickle.loads(pickle.dumps(transform))
        torch.manual_seed(0)
        first = transform(image)
        torch.manual_seed(0)
        second = clone(image)
        if isinstance(first, list):
            assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
        else:
            assert torch.equal(first, second)


# --------------------------------------------------------------------------- transforms


def test_simclr_transform_gives_two_differing_one_channel_views(
    digit_dataset: Callable[..., ArrayImageDataset],
) -> None:
    torch.manual_seed(0)
    dataset = digit_dataset(simclr_transform(input_size=32))
    views, label = dataset[3]
    assert isinstance(label, int) and label == int(dataset.labels[3])
    assert isinstance(views, list) and len(views) == 2
    for view in views:
        assert view.shape == (1, 32, 32) and view.dtype == torch.float32
        assert torch.isfinite(view).all()
    assert not torch.equal(views[0], views[1])


def test_simclr_transform_overrides_reach_lightly() -> None:
    transform = simclr_transform(input_size=24, min_scale=0.5)
    views: Any = transform(Image.new("L", (28, 28), color=128))
    assert views[0].shape == (1, 24, 24)
    crop = transform.transforms[0].transform.transforms[1]
    assert crop.scale == (0.5, 1.0)


def test_eval_transform_deterministic_and_normalized(
    digit_dataset: Callable[..., ArrayImageDataset],
) -> None:
    dataset = digit_dataset(eval_transform(input_size=32))
    a, _ = dataset[0]
    b, _ = dataset[0]
    assert a.shape == (1, 32, 32)
    assert torch.equal(a, b)
    assert eval_transform(32, in_channels=3)(Image.new("L", (8, 8))).shape == (3, 32, 32)


def test_posttrain_transform_kinds() -> None:
    image = _rgb_image(3).convert("L")
    torch.testing.assert_close(posttrain_transform("none", 16)(image), eval_transform(16)(image))
    light = posttrain_transform("light", 16, in_channels=3)
    torch.manual_seed(0)
    a, b = light(image), light(image)
    assert a.shape == (3, 16, 16) and not torch.equal(a, b)
    views = posttrain_transform("simclr", 16)(image)
    assert len(views) == 2 and views[0].shape == (1, 16, 16)
    with pytest.raises(ValueError, match="heavy"):
        posttrain_transform("heavy", 16)
