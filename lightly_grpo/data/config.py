"""``DataConfig``: which images, at what size; the data section of every chain's config."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataConfig:
    """Which images, at what size.

    Attributes:
        dataset: ``"default"``, ``"fashion-mnist"``, ``"digits"`` or an ImageFolder directory
            (see :func:`lightly_grpo.data.resolve_dataset`).
        data_root: Directory of the Fashion-MNIST files, if not the Debian default.
        input_size: Side of the images fed to the backbone, in pixels.
        in_channels: Channels of the images fed to the backbone, 1 or 3.
        num_workers: ``DataLoader`` worker processes (0 loads in the main process).
        seed: Seed of the training randomness: initialisation, shuffling, augmentation. A second
            seed is a second training run on the same images.
        data_seed: Seed of which images a run sees: the labeled subset, the validation images,
            the evaluated subsets and the digits train/test split. Fixed across training seeds,
            so every seed and method is scored on the same test images.

    Raises:
        ValueError: For ``input_size < 1``, ``in_channels`` not 1 or 3, or ``num_workers < 0``.

    Examples:
        >>> DataConfig(dataset="digits", input_size=16).in_channels
        1
        >>> DataConfig(in_channels=2)
        Traceback (most recent call last):
        ...
        ValueError: in_channels must be 1 or 3, got 2
    """

    dataset: str = "default"  # "default", "fashion-mnist", "digits" or an ImageFolder directory
    data_root: str | None = None  # Fashion-MNIST directory; None = the Debian package's
    input_size: int = 32  # side of the backbone's input images in pixels
    in_channels: int = 1  # 1 (grayscale) or 3; RGB folders are converted to this
    num_workers: int = 0  # DataLoader worker processes
    seed: int = 0  # training seed: initialisation, shuffling, augmentation
    data_seed: int = 0  # which images: labeled subset, validation, evaluated subsets

    def __post_init__(self) -> None:
        # Caught here, at the command line, rather than at the first batch of a long run.
        if self.input_size < 1:
            raise ValueError(f"input_size must be >= 1, got {self.input_size}")
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {self.in_channels}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")


__all__ = ["DataConfig"]
