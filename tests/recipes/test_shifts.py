from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset

from benchlib.shifts import (
    BLUR_SIGMA,
    NOISE_STD,
    SHIFT_STRENGTHS,
    SHIFTS,
    ShiftedDataset,
    add_noise,
    apply_shift,
    rotate,
)
from lightly_grpo.data import dataset_labels, eval_transform, resolve_dataset


def _asymmetric(size: int = 16, mode: str = "L") -> Image.Image:
    """A bright bar in the top-left quadrant: no rotation maps it onto itself."""
    pixels = np.zeros((size, size), dtype=np.uint8)
    pixels[2:5, 2 : size // 2] = 255
    pixels[2 : size // 2, 2:4] = 180
    image = Image.fromarray(pixels)
    return image if mode == "L" else image.convert("RGB")


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64) / 255.0


def _high_freq_energy(pixels: np.ndarray) -> float:
    return float((np.diff(pixels, axis=0) ** 2).sum() + (np.diff(pixels, axis=1) ** 2).sum())


# --------------------------------------------------------------------------- the table


def test_shift_table_names_and_strengths() -> None:
    assert set(SHIFTS) == {"rotation", "noise", "blur", "rotation+noise"}
    assert set(SHIFT_STRENGTHS) == set(SHIFTS)
    assert "30" in SHIFT_STRENGTHS["rotation"] and "0.2" in SHIFT_STRENGTHS["noise"]
    assert "20" in SHIFT_STRENGTHS["rotation+noise"] and "1" in SHIFT_STRENGTHS["blur"]


def test_unknown_shift_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="'jpeg'.*") as info:
        ShiftedDataset(resolve_dataset("digits", "test"), "jpeg")
    assert all(name in str(info.value) for name in SHIFTS)
    with pytest.raises(ValueError, match="jpeg"):
        apply_shift(_asymmetric(), "jpeg", 0)


# --------------------------------------------------------------------------- strengths


def test_noise_has_the_stated_std_and_is_deterministic_per_item() -> None:
    gray = Image.new("L", (96, 96), color=128)
    noisy = add_noise(gray, index=7)
    residual = _pixels(noisy) - 128 / 255
    assert abs(residual.std() - NOISE_STD) < 0.01 and abs(residual.mean()) < 0.01
    assert noisy.tobytes() == apply_shift(gray, "noise", 7).tobytes()
    assert noisy.tobytes() != apply_shift(gray, "noise", 8).tobytes()
    assert noisy.tobytes() != apply_shift(gray, "noise", 7, seed=1).tobytes()
    # Clipped to the valid range: a white image only gets darker.
    white = _pixels(add_noise(Image.new("L", (32, 32), color=255), 0))
    assert white.max() == 1.0 and white.min() < 0.9


def test_noise_on_rgb_is_independent_per_channel() -> None:
    noisy = _pixels(add_noise(Image.new("RGB", (48, 48), color=(128, 128, 128)), 0))
    assert noisy.shape == (48, 48, 3)
    assert abs(np.corrcoef(noisy[..., 0].ravel(), noisy[..., 1].ravel())[0, 1]) < 0.1
    assert np.all(np.abs(noisy.reshape(-1, 3).std(axis=0) - NOISE_STD) < 0.02)


def test_blur_matches_a_gaussian_of_the_stated_sigma() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (20, 20)).astype(np.float64)
    shifted = np.asarray(apply_shift(Image.fromarray(pixels.astype(np.uint8)), "blur", 0))
    # The reference: a separable 5-tap Gaussian with sigma 1, reflected borders.
    taps = np.exp(-(np.arange(-2, 3) ** 2) / (2 * BLUR_SIGMA**2))
    taps /= taps.sum()
    padded = np.pad(pixels, 2, mode="reflect")
    rows = sum(w * padded[:, k : k + 20] for k, w in enumerate(taps))
    expected = sum(w * rows[k : k + 20, :] for k, w in enumerate(taps))
    assert np.abs(shifted - expected).max() <= 1.0
    assert _high_freq_energy(shifted / 255) < 0.2 * _high_freq_energy(pixels / 255)
    flat = Image.new("L", (8, 8), color=77)
    assert apply_shift(flat, "blur", 0).tobytes() == flat.tobytes()


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_rotation_is_the_stated_angle_with_alternating_sign(mode: str) -> None:
    image = _asymmetric(mode=mode)
    even, odd = apply_shift(image, "rotation", 0), apply_shift(image, "rotation", 1)
    kwargs = {"resample": Image.Resampling.BILINEAR, "fillcolor": 0}
    assert even.tobytes() == image.rotate(30, **kwargs).tobytes()  # type: ignore[arg-type]
    assert odd.tobytes() == image.rotate(-30, **kwargs).tobytes()  # type: ignore[arg-type]
    assert even.tobytes() != image.tobytes() and even.tobytes() != odd.tobytes()
    assert even.mode == mode and even.size == image.size
    assert apply_shift(image, "rotation", 4).tobytes() == even.tobytes()


def test_rotation_plus_noise_rotates_by_20_then_adds_the_noise() -> None:
    image = _asymmetric()
    combined = apply_shift(image, "rotation+noise", 3, seed=2)
    assert combined.tobytes() == add_noise(rotate(image, -20), 3, seed=2).tobytes()
    residual = _pixels(combined) - _pixels(rotate(image, -20))
    assert 0.1 < residual.std() < 0.25  # noise on top of the rotation (clipping shrinks it)
    assert combined.tobytes() != apply_shift(image, "rotation", 3).tobytes()


@pytest.mark.parametrize("shift", sorted(SHIFTS))
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_every_shift_keeps_mode_and_size_and_changes_the_image(shift: str, mode: str) -> None:
    image = _asymmetric(mode=mode)
    shifted = apply_shift(image, shift, 0)
    assert shifted.mode == mode and shifted.size == image.size
    assert shifted.tobytes() != image.tobytes()
    assert shifted.tobytes() == apply_shift(image, shift, 0).tobytes()


def test_shifts_reject_other_inputs() -> None:
    with pytest.raises(ValueError, match="'RGBA'"):
        apply_shift(Image.new("RGBA", (4, 4)), "blur", 0)
    with pytest.raises(ValueError, match="seed=-1"):
        add_noise(Image.new("L", (4, 4)), 0, seed=-1)
    with pytest.raises(ValueError, match="-2"):
        ShiftedDataset(resolve_dataset("digits", "test"), "noise", seed=-2)
    with pytest.raises(ValueError, match="Tensor"):
        apply_shift(torch.zeros(1, 4, 4), "noise", 0)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- ShiftedDataset


def test_shifted_digits_are_identical_across_calls_and_differ_from_clean() -> None:
    clean = resolve_dataset("digits", "test", None)
    assert isinstance(clean[0][0], Image.Image)  # no transform: PIL images
    shifted = ShiftedDataset(clean, "noise")
    again = ShiftedDataset(resolve_dataset("digits", "test", None), "noise")
    assert len(shifted) == len(clean)
    for i in (0, 1, len(clean) - 1):
        image, label = shifted[i]
        assert label == clean[i][1] and image.size == clean[i][0].size
        assert image.tobytes() == shifted[i][0].tobytes() == again[i][0].tobytes()
        assert image.tobytes() != clean[i][0].tobytes()
    assert shifted[-1][0].tobytes() == shifted[len(clean) - 1][0].tobytes()
    with pytest.raises(IndexError):
        shifted[len(clean)]
    np.testing.assert_array_equal(dataset_labels(shifted), dataset_labels(clean))


@pytest.mark.parametrize("in_channels", [1, 3])
def test_shifted_dataset_with_eval_transform_gives_normalized_tensors(in_channels: int) -> None:
    clean = resolve_dataset("digits", "test", None)
    shifted = ShiftedDataset(clean, "rotation+noise", transform=eval_transform(28, in_channels))
    image, label = shifted[5]
    assert image.shape == (in_channels, 28, 28) and image.dtype == torch.float32
    assert label == clean[5][1]
    unshifted = eval_transform(28, in_channels)(clean[5][0])
    assert not torch.allclose(image, unshifted)
    images, labels = next(iter(DataLoader(shifted, batch_size=8)))
    assert images.shape == (8, in_channels, 28, 28) and labels.shape == (8,)


def test_shifted_subset_uses_positions_in_the_subset_and_pickles() -> None:
    clean = resolve_dataset("digits", "test", None)
    part = Subset(clean, [10, 20, 30])
    shifted = ShiftedDataset(part, "noise", seed=4)
    assert len(shifted) == 3
    expected = apply_shift(clean[20][0], "noise", 1, seed=4)
    assert shifted[1][0].tobytes() == expected.tobytes()
    np.testing.assert_array_equal(shifted.labels, dataset_labels(clean)[[10, 20, 30]])
    copy = pickle.loads(pickle.dumps(shifted))
    assert copy[2][0].tobytes() == shifted[2][0].tobytes()


def test_shifted_dataset_rejects_transformed_items() -> None:
    transformed = resolve_dataset("digits", "test", eval_transform(8))
    with pytest.raises(ValueError, match="transform=None"):
        ShiftedDataset(transformed, "blur")[0]


def test_shifted_fashion_mnist(fashion_mnist: None) -> None:
    clean = resolve_dataset("fashion-mnist", "test", None)
    shifted = ShiftedDataset(clean, "blur", transform=eval_transform(28, 1))
    image, label = shifted[0]
    assert image.shape == (1, 28, 28) and label == clean[0][1]
    raw = np.asarray(apply_shift(clean[0][0], "blur", 0), dtype=np.float64)
    clean_raw = np.asarray(clean[0][0], dtype=np.float64)
    assert _high_freq_energy(raw) < _high_freq_energy(clean_raw)
