"""The post-training chain on messy image folders: fails early and clearly, or skips and warns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightly_grpo.chains.config import EvalConfig, PosttrainConfig
from lightly_grpo.chains.evaluate import evaluation_data
from lightly_grpo.chains.recipes import labeled_data
from lightly_grpo.data.config import DataConfig


def _folder(root: Path, classes: dict[str, int], start: int = 0) -> None:
    for c, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = np.random.default_rng(start + 100 * c + i).integers(0, 256, (8, 8, 3))
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")


def _config(dataset: Path) -> PosttrainConfig:
    data = DataConfig(dataset=str(dataset), input_size=8, in_channels=3)
    return PosttrainConfig(data=data, label_fraction=1.0, val_images=0, batch_size=4)


def test_a_single_class_folder_fails_before_training_naming_the_class(tmp_path: Path) -> None:
    _folder(tmp_path, {"cat": 6})
    with pytest.raises(ValueError, match=r"at least 2 classes, got 1 \(class 'cat'\)"):
        labeled_data(_config(tmp_path))


def test_a_corrupt_test_image_is_skipped_with_a_warning_before_training(tmp_path: Path) -> None:
    _folder(tmp_path / "train", {"a": 4, "b": 4})
    _folder(tmp_path / "test", {"a": 3, "b": 3}, start=50)
    broken = tmp_path / "test" / "b" / "broken.png"
    broken.write_bytes(b"not an image")
    cfg = _config(tmp_path)
    # The evaluation splits are resolved (and checked) when the chain starts, not after training.
    with pytest.warns(UserWarning, match=str(broken)):
        data = evaluation_data(cfg.data, EvalConfig())
    assert len(data.test) == 6  # the 6 good test images; the broken one is left out
    assert labeled_data(cfg).size == 8
