"""Image folders as users really have them: broken files, empty classes, mixed modes, tiny sets."""

from __future__ import annotations

import io
import os
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

from lightly_grpo.data import (
    CheckedImageFolder,
    check_training_data,
    eval_transform,
    image_error,
    images_for_display,
    load_image_folder,
    load_rgb_image,
    make_loader,
    resolve_dataset,
)


def _noise(size: int = 8, seed: int = 0) -> Image.Image:
    # Random pixels: PNG cannot compress them, so a cut file loses pixel data, not padding.
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _write_good(directory: Path, count: int, start: int = 0) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        _noise(seed=i).save(directory / f"{i}.png")


def _png_bytes(size: int = 8) -> bytes:
    buffer = io.BytesIO()
    _noise(size).save(buffer, "PNG")
    return buffer.getvalue()


def _name(path: Path) -> str:
    return re.escape(str(path))


# --------------------------------------------------------------------------- broken files


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"this is not a PNG, it is an HTML error page", id="garbage"),
        pytest.param(b"", id="zero-byte"),
        pytest.param(_png_bytes()[: len(_png_bytes()) // 2], id="truncated-png"),
    ],
)
def test_unreadable_file_is_skipped_with_a_warning_naming_it(
    tmp_path: Path, content: bytes
) -> None:
    _write_good(tmp_path / "cat", 2)
    _write_good(tmp_path / "dog", 2)
    bad = tmp_path / "dog" / "broken.png"
    bad.write_bytes(content)
    # The per-file warning names the file and carries PIL's error, the summary the count.
    with (
        pytest.warns(UserWarning, match=rf"'{_name(bad)}': \w*Error: "),
        pytest.warns(UserWarning, match="skipped 1 of 5 image files"),
    ):
        dataset = load_image_folder(tmp_path, eval_transform(8, in_channels=3))
    assert len(dataset) == 4 and dataset.targets == [0, 0, 1, 1]
    assert [Path(path) for path, _ in dataset.skipped] == [bad]
    # Every remaining item loads: training would not crash in the middle of an epoch.
    images, labels = next(iter(make_loader(dataset, batch_size=4, shuffle=False)))
    assert images.shape == (4, 3, 8, 8) and labels.tolist() == [0, 0, 1, 1]


def test_truncated_jpeg_is_caught_where_verify_is_not(tmp_path: Path) -> None:
    # Image.verify() accepts a JPEG that lost its tail; a full decode does not.
    buffer = io.BytesIO()
    _noise(64).save(buffer, "JPEG", quality=95)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 3 // 4])
    with Image.open(cut) as image:
        image.verify()  # no error: verify alone would have let the file through
    error = image_error(cut)
    assert error is not None and "truncated" in error
    good = tmp_path / "good.jpg"
    good.write_bytes(buffer.getvalue())
    assert image_error(good) is None


def test_image_error_sees_a_file_that_changed_since_its_last_check(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    _noise().save(path)
    assert image_error(path) is None
    path.write_bytes(b"garbage now")
    os.utime(path, ns=(1, 1))  # a different mtime, even on a coarse-clock file system
    assert image_error(path) is not None


def test_every_file_unreadable_raises_naming_the_folder(tmp_path: Path) -> None:
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "x.png").write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=rf"{_name(tmp_path)}.*all 2 image files"):
            load_image_folder(tmp_path)


def test_only_empty_class_folders_raise(tmp_path: Path) -> None:
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
    with pytest.raises(ValueError, match=_name(tmp_path)):
        load_image_folder(tmp_path)


def test_file_broken_after_the_scan_raises_a_clear_error(tmp_path: Path) -> None:
    _write_good(tmp_path / "cat", 2)
    dataset = load_image_folder(tmp_path)
    victim = Path(dataset.samples[1][0])
    victim.write_bytes(_png_bytes()[:40])
    with pytest.raises(ValueError, match=rf"cannot read image '{_name(victim)}': \w+"):
        dataset[1]
    victim.unlink()
    with pytest.raises(ValueError, match=rf"cannot read image '{_name(victim)}'"):
        images_for_display(dataset, [1], size=8)
    with pytest.raises(ValueError, match="cannot read image 'missing.png'"):
        load_rgb_image("missing.png")


def test_check_images_false_keeps_every_file(tmp_path: Path) -> None:
    _write_good(tmp_path / "cat", 1)
    bad = tmp_path / "cat" / "bad.png"
    bad.write_bytes(b"")
    dataset = load_image_folder(tmp_path, check_images=False)
    assert len(dataset) == 2 and dataset.skipped == []
    with pytest.raises(ValueError, match=_name(bad)):
        dataset[1]


def test_non_image_files_are_ignored_silently(tmp_path: Path) -> None:
    # The extension filter comes first: notes and thumbnails caches are not "broken images".
    _write_good(tmp_path / "cat", 2)
    (tmp_path / "cat" / "README.txt").write_text("not an image")
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"\x00\x01")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = load_image_folder(tmp_path)
    assert len(dataset) == 2


def test_scan_in_threads_matches_and_dataset_pickles(tmp_path: Path) -> None:
    # 70 files: over the threshold where the scan runs in a thread pool.
    _write_good(tmp_path / "a", 35)
    _write_good(tmp_path / "b", 34)
    bad = tmp_path / "b" / "zz_bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.warns(UserWarning, match="skipped 1 of 70"), pytest.warns(match=_name(bad)):
        dataset = load_image_folder(tmp_path)
    assert len(dataset) == 69 and [Path(p) for p, _ in dataset.skipped] == [bad]
    # DataLoader workers receive the dataset pickled.
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy.samples == dataset.samples and copy[68][1] == 1


# --------------------------------------------------------------------------- classes, modes


def test_empty_class_folder_keeps_indices_stable_and_warns(tmp_path: Path) -> None:
    _write_good(tmp_path / "ant", 2)
    (tmp_path / "bee").mkdir()
    _write_good(tmp_path / "cat", 2)
    with pytest.warns(UserWarning, match=_name(tmp_path / "bee")):
        dataset = load_image_folder(tmp_path)
    assert dataset.classes == ["ant", "bee", "cat"] and dataset.empty_classes == ["bee"]
    assert dataset.targets == [0, 0, 2, 2]


def test_mixed_modes_come_out_as_same_shaped_rgb_tensors(tmp_path: Path) -> None:
    (tmp_path / "mixed").mkdir()
    rgb = _noise()
    images = {
        "gray.png": rgb.convert("L"),
        "rgb.png": rgb,
        "rgba.png": rgb.convert("RGBA"),
        "palette.png": rgb.convert("P"),
        "gray_alpha.png": rgb.convert("LA"),
        "rgb.jpg": rgb,
    }
    for name, image in images.items():
        image.save(tmp_path / "mixed" / name)
    dataset = load_image_folder(tmp_path, eval_transform(8, in_channels=3))
    assert len(dataset) == len(images)
    tensors = [dataset[i][0] for i in range(len(dataset))]
    assert all(t.shape == (3, 8, 8) and t.dtype == torch.float32 for t in tensors)
    # The grayscale file gives three equal channels, the colour file three different ones.
    by_name = {Path(path).name: t for (path, _), t in zip(dataset.samples, tensors, strict=True)}
    gray = by_name["gray.png"]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert not torch.equal(by_name["rgb.png"][0], by_name["rgb.png"][1])


def test_split_folder_test_corrupt_file_is_skipped_and_labels_follow_train(
    tmp_path: Path,
) -> None:
    for cls in ("ant", "bee", "cat"):
        _write_good(tmp_path / "train" / cls, 2)
    # test/ lacks 'bee' entirely: 'cat' must keep label 2, not slide to 1.
    _write_good(tmp_path / "test" / "ant", 1)
    _write_good(tmp_path / "test" / "cat", 2)
    corrupt = tmp_path / "test" / "cat" / "corrupt.png"
    corrupt.write_bytes(_png_bytes()[:30])
    with (
        pytest.warns(UserWarning, match=_name(corrupt)),
        pytest.warns(UserWarning, match="skipped 1 of 4"),
        pytest.warns(UserWarning, match=_name(tmp_path / "test" / "bee")),
    ):
        test = resolve_dataset(tmp_path, "test")
    assert test.classes == ["ant", "bee", "cat"] and test.targets == [0, 2, 2]
    assert len(resolve_dataset(tmp_path, "train")) == 6


def test_split_folder_test_class_unknown_to_train_raises(tmp_path: Path) -> None:
    _write_good(tmp_path / "train" / "ant", 1)
    _write_good(tmp_path / "test" / "ant", 1)
    _write_good(tmp_path / "test" / "wasp", 1)
    with pytest.raises(ValueError, match="wasp"):
        resolve_dataset(tmp_path, "test")


def test_fixed_classes_must_not_be_empty(tmp_path: Path) -> None:
    _write_good(tmp_path / "ant", 1)
    with pytest.raises(ValueError, match="at least one class"):
        CheckedImageFolder(tmp_path, classes=[])


# --------------------------------------------------------------------------- training checks


def test_single_class_cannot_train_a_classifier(tmp_path: Path) -> None:
    _write_good(tmp_path / "cat", 3)
    dataset = load_image_folder(tmp_path)
    check_training_data(dataset, 2, drop_last=True)  # fine for self-supervised training
    with pytest.raises(ValueError, match=r"needs at least 2 classes, got 1 \(class 'cat'\)"):
        check_training_data(dataset, 2, drop_last=True, min_classes=2)


def test_subset_with_one_class_left_is_caught(tmp_path: Path) -> None:
    _write_good(tmp_path / "cat", 2)
    _write_good(tmp_path / "dog", 2)
    dataset = load_image_folder(tmp_path)
    check_training_data(dataset, 4, drop_last=True, min_classes=2)
    with pytest.raises(ValueError, match=r"labeled set needs at least 2 classes.*'dog'"):
        check_training_data(
            Subset(dataset, [2, 3]), 1, drop_last=True, min_classes=2, name="labeled set"
        )


def test_dataset_smaller_than_batch_raises_with_the_numbers(tmp_path: Path) -> None:
    _write_good(tmp_path / "cat", 3)
    _write_good(tmp_path / "dog", 3)
    dataset = load_image_folder(tmp_path)
    with pytest.raises(ValueError, match="training set has 6 images, fewer than --batch-size 8"):
        check_training_data(dataset, 8, drop_last=True)
    check_training_data(dataset, 8, drop_last=False)  # the last, partial batch is kept
    # The loader itself warns that it would yield nothing.
    with pytest.warns(UserWarning, match="no batch at all"):
        loader = make_loader(dataset, batch_size=8, shuffle=True, drop_last=True)
    assert len(loader) == 0


def test_empty_dataset_and_bad_arguments() -> None:
    with pytest.raises(ValueError, match="empty"):
        check_training_data([], 4, drop_last=False)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        check_training_data([(0, 0)], 0, drop_last=False)


def test_many_broken_files_warn_a_bounded_number_of_times(tmp_path: Path) -> None:
    # A folder of failed downloads must not flood the console: 20 named, then a count.
    _write_good(tmp_path / "cat", 1)
    for i in range(25):
        (tmp_path / "cat" / f"bad{i:02d}.png").write_bytes(b"<html>")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = load_image_folder(tmp_path)
    messages = [str(w.message) for w in caught]
    assert sum(m.startswith("Skipping unreadable image") for m in messages) == 20
    assert any("skipped 25 of 26" in m and "5 more" in m for m in messages)
    assert len(dataset.skipped) == 25 and len(dataset) == 1
