"""Out-of-distribution test shifts at fixed strengths, applied to PIL images.

Each shift maps a clean test image to a shifted one before the eval transform runs:

- ``"rotation"``: rotation by :data:`ROTATION_DEGREES` degrees, counter-clockwise for even
  item indices and clockwise for odd ones, bilinear, corners filled with 0 (black);
- ``"noise"``: additive Gaussian noise of standard deviation :data:`NOISE_STD` on intensities
  scaled to [0, 1], independent per pixel and channel, clipped to [0, 1];
- ``"blur"``: Gaussian blur of standard deviation :data:`BLUR_SIGMA` pixels with a
  :data:`BLUR_KERNEL` x :data:`BLUR_KERNEL` kernel (torchvision's ``gaussian_blur``,
  reflected borders);
- ``"rotation+noise"``: rotation by :data:`COMBINED_ROTATION_DEGREES` degrees (sign
  alternating as above), then the noise of ``"noise"``.

Every shift is deterministic: the rotation sign and the noise of item ``i`` depend only on
``i`` and a seed, so every call and every epoch yields the same shifted images and every
method is scored on identical inputs. :data:`SHIFT_STRENGTHS` describes each shift in words.

Examples:
    >>> from lightly_grpo.data import eval_transform, resolve_dataset
    >>> test = ShiftedDataset(resolve_dataset("digits", "test"), "noise", eval_transform(16))
    >>> image, label = test[0]
    >>> image.shape
    torch.Size([1, 16, 16])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import Dataset

from lightly_grpo.data.datasets import dataset_labels

#: Angle of the ``"rotation"`` shift in degrees; the sign alternates with the item index.
ROTATION_DEGREES = 30.0
#: Angle of the rotation within ``"rotation+noise"``, in degrees.
COMBINED_ROTATION_DEGREES = 20.0
#: Standard deviation of the Gaussian pixel noise, on intensities scaled to [0, 1].
NOISE_STD = 0.2
#: Standard deviation of the Gaussian blur, in pixels.
BLUR_SIGMA = 1.0
#: Side of the (square) Gaussian blur kernel, in pixels.
BLUR_KERNEL = 5
# Mixed into every noise seed so that shift noise never coincides with other seeded streams.
_NOISE_SEED_BASE = 20_240_611
_MODES = ("L", "RGB")

ShiftFn = Callable[[Image.Image, int, int], Image.Image]


def _check_image(image: Any) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise ValueError(
            f"shifts take PIL images, got {type(image).__name__}; build the dataset with "
            "transform=None and pass the transform to ShiftedDataset instead"
        )
    if image.mode not in _MODES:
        raise ValueError(f"image mode must be one of {_MODES}, got {image.mode!r}")
    return image


def rotation_angle(index: int, degrees: float = ROTATION_DEGREES) -> float:
    """The signed rotation angle of item ``index``: ``+degrees`` if even, ``-degrees`` if odd.

    Alternating the sign keeps the shift deterministic while not favouring one direction.

    Examples:
        >>> rotation_angle(0), rotation_angle(1)
        (30.0, -30.0)
    """
    return float(degrees) if index % 2 == 0 else -float(degrees)


def rotate(image: Image.Image, angle: float) -> Image.Image:
    """Rotates ``image`` counter-clockwise by ``angle`` degrees, bilinear, same size, black fill.

    Examples:
        >>> rotate(Image.new("L", (8, 8), color=255), 30).getpixel((0, 0))
        0
    """
    image = _check_image(image)
    fill: int | tuple[int, int, int] = 0 if image.mode == "L" else (0, 0, 0)
    return image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=fill)


def add_noise(image: Image.Image, index: int, seed: int = 0, std: float = NOISE_STD) -> Image.Image:
    """Adds seeded Gaussian noise of standard deviation ``std`` on [0, 1] intensities.

    The noise depends only on ``(seed, index)``, so the same item always gets the same noise.

    Args:
        image: PIL image in mode ``"L"`` or ``"RGB"``.
        index: Item index the noise is seeded with.
        seed: Base seed.
        std: Noise standard deviation on intensities in [0, 1].

    Examples:
        >>> gray = Image.new("L", (4, 4), color=128)
        >>> add_noise(gray, 3).tobytes() == add_noise(gray, 3).tobytes() != gray.tobytes()
        True
    """
    image = _check_image(image)
    # numpy seeds take non-negative integers only; say which argument was wrong.
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be >= 0, got index={index}, seed={seed}")
    pixels = np.asarray(image, dtype=np.float64) / 255.0
    rng = np.random.default_rng([_NOISE_SEED_BASE, int(seed), int(index)])
    noisy = np.clip(pixels + rng.normal(0.0, std, size=pixels.shape), 0.0, 1.0)
    # uint8 (H, W) comes back as mode "L" and (H, W, 3) as "RGB", the mode it came in.
    return Image.fromarray(np.rint(noisy * 255.0).astype(np.uint8))


def blur(image: Image.Image, sigma: float = BLUR_SIGMA, kernel: int = BLUR_KERNEL) -> Image.Image:
    """Gaussian blur with standard deviation ``sigma`` and a ``kernel`` x ``kernel`` kernel.

    Examples:
        >>> blur(Image.new("L", (8, 8), color=9)).getpixel((4, 4))
        9
    """
    image = _check_image(image)
    blurred: Image.Image = TF.gaussian_blur(image, [kernel, kernel], [sigma, sigma])
    return blurred


def _rotation_shift(image: Image.Image, index: int, seed: int) -> Image.Image:
    return rotate(image, rotation_angle(index, ROTATION_DEGREES))


def _noise_shift(image: Image.Image, index: int, seed: int) -> Image.Image:
    return add_noise(image, index, seed, NOISE_STD)


def _blur_shift(image: Image.Image, index: int, seed: int) -> Image.Image:
    return blur(image, BLUR_SIGMA, BLUR_KERNEL)


def _rotation_noise_shift(image: Image.Image, index: int, seed: int) -> Image.Image:
    # Noise after rotation, so the black corners are noisy too, as a sensor would make them.
    rotated = rotate(image, rotation_angle(index, COMBINED_ROTATION_DEGREES))
    return add_noise(rotated, index, seed, NOISE_STD)


#: The shifts by name: ``fn(image, index, seed) -> shifted image``. Top-level functions, so
#: a :class:`ShiftedDataset` can be pickled into ``DataLoader`` worker processes.
SHIFTS: dict[str, ShiftFn] = {
    "rotation": _rotation_shift,
    "noise": _noise_shift,
    "blur": _blur_shift,
    "rotation+noise": _rotation_noise_shift,
}

#: Each shift's strength in words, for reports and documentation.
SHIFT_STRENGTHS: dict[str, str] = {
    "rotation": f"rotation by +/-{ROTATION_DEGREES:g} degrees (sign alternating by item), "
    "bilinear, black fill",
    "noise": f"Gaussian pixel noise, std {NOISE_STD:g} on [0, 1] intensities, clipped",
    "blur": f"Gaussian blur, sigma {BLUR_SIGMA:g} px, {BLUR_KERNEL}x{BLUR_KERNEL} kernel",
    "rotation+noise": f"rotation by +/-{COMBINED_ROTATION_DEGREES:g} degrees, then Gaussian "
    f"pixel noise std {NOISE_STD:g}",
}


def _check_shift(shift: str) -> ShiftFn:
    if shift not in SHIFTS:
        raise ValueError(f"shift must be one of {sorted(SHIFTS)}, got {shift!r}")
    return SHIFTS[shift]


def apply_shift(image: Image.Image, shift: str, index: int, seed: int = 0) -> Image.Image:
    """Applies the named shift to the PIL image of item ``index``.

    Args:
        image: PIL image in mode ``"L"`` or ``"RGB"``; the result has the same mode and size.
        shift: A key of :data:`SHIFTS`.
        index: Item index; sets the rotation sign and seeds the noise.
        seed: Base seed of the noise.

    Raises:
        ValueError: For an unknown shift, a non-PIL image or another image mode.

    Examples:
        >>> apply_shift(Image.new("RGB", (8, 8)), "rotation+noise", index=5).size
        (8, 8)
    """
    return _check_shift(shift)(image, index, seed)


class ShiftedDataset(Dataset[tuple[Any, int]]):
    """A dataset of ``(PIL image, label)`` items with a fixed shift applied to every image.

    Item ``i`` is the wrapped item ``i`` with :func:`apply_shift` applied to its image using
    index ``i`` (the position in the wrapped dataset, e.g. in a ``Subset``), then
    ``transform``; identical on every access.

    Args:
        dataset: Items ``(PIL image, label)``, e.g. ``resolve_dataset(name, "test")`` (with no
            transform) or a ``Subset`` of it.
        shift: A key of :data:`SHIFTS`.
        transform: Applied to the shifted PIL image, e.g. ``eval_transform(...)``.
        seed: Base seed of the noise.

    Raises:
        ValueError: For an unknown shift or a negative seed (at construction), or an item
            whose image is not a PIL image in mode ``"L"`` or ``"RGB"`` (on access).

    Examples:
        >>> from lightly_grpo.data import resolve_dataset
        >>> shifted = ShiftedDataset(resolve_dataset("digits", "test"), "rotation")
        >>> image, label = shifted[0]
        >>> image.mode, image.size, len(shifted)
        ('L', (8, 8), 360)
    """

    def __init__(
        self,
        dataset: Dataset[tuple[Any, int]],
        shift: str,
        transform: Callable[[Image.Image], Any] | None = None,
        seed: int = 0,
    ) -> None:
        self._fn = _check_shift(shift)
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.dataset = dataset
        self.shift = shift
        self.transform = transform
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    @property
    def labels(self) -> np.ndarray:
        """The wrapped dataset's labels (see :func:`dataset_labels`); shifts keep labels."""
        return dataset_labels(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        index = int(index)
        # A negative index names the same item, and so gets the same shift, as its positive.
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        image, label = self.dataset[index]
        shifted: Any = self._fn(image, index, self.seed)
        if self.transform is not None:
            shifted = self.transform(shifted)
        return shifted, int(label)


__all__ = [
    "BLUR_KERNEL",
    "BLUR_SIGMA",
    "COMBINED_ROTATION_DEGREES",
    "NOISE_STD",
    "ROTATION_DEGREES",
    "SHIFTS",
    "SHIFT_STRENGTHS",
    "ShiftedDataset",
    "add_noise",
    "apply_shift",
    "blur",
    "rotate",
    "rotation_angle",
]
