"""Deprecated data names, kept importable: each warns when it is constructed."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from lightly_grpo.data.datasets import ArrayImageDataset, resolve_dataset
from lightly_grpo.data.transforms import channel_step


class ToChannels:
    """Deprecated: use :func:`channel_step` (torchvision's ``Grayscale`` or :func:`to_rgb`).

    Converts a PIL image or a (C, H, W) tensor to ``num_channels`` channels (1 or 3), as
    before; constructing one emits a ``DeprecationWarning``.

    Examples:
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", DeprecationWarning)
        ...     ToChannels(1)(Image.new("RGB", (4, 4))).mode
        'L'
    """

    def __init__(self, num_channels: int) -> None:
        warnings.warn(
            "ToChannels is deprecated; use lightly_grpo.data.channel_step(in_channels)",
            DeprecationWarning,
            stacklevel=2,
        )
        if num_channels not in (1, 3):
            raise ValueError(f"num_channels must be 1 or 3, got {num_channels}")
        self.num_channels = num_channels

    def __call__(self, image: Any) -> Any:
        if isinstance(image, Image.Image):
            return channel_step(self.num_channels)(image)
        if isinstance(image, torch.Tensor):
            channels = image.shape[-3]
            if channels == self.num_channels:
                return image
            if channels == 1:
                return image.expand(*image.shape[:-3], 3, *image.shape[-2:]).clone()
            if channels == 3:
                weights = torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype)
                return (image * weights.view(3, 1, 1)).sum(dim=-3, keepdim=True)
            raise ValueError(
                f"Cannot convert a tensor with {channels} channels (shape {tuple(image.shape)})"
            )
        raise TypeError(f"Expected a PIL image or a tensor, got {type(image).__name__}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_channels={self.num_channels})"


@dataclass(frozen=True)
class DatasetSpec:
    """Deprecated: use :class:`lightly_grpo.data.DataConfig` and ``resolve_dataset``.

    Examples:
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", DeprecationWarning)
        ...     len(DatasetSpec("digits").resolve("test"))
        360
    """

    name: str = "default"
    root: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        warnings.warn(
            "DatasetSpec is deprecated; use lightly_grpo.data.DataConfig and "
            "resolve_dataset(name, split, transform, root=..., seed=...)",
            DeprecationWarning,
            stacklevel=3,
        )

    def resolve(
        self, split: str, transform: Callable[[Image.Image], Any] | None = None
    ) -> ArrayImageDataset | ImageFolder:
        """Returns the dataset of ``split`` with ``transform`` applied to each item."""
        return resolve_dataset(self.name, split, transform, root=self.root, seed=self.seed)


__all__ = ["DatasetSpec", "ToChannels"]
