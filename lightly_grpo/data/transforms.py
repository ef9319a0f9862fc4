"""Image transforms: lightly's SimCLR views, the eval transform, post-training augmentation.

Every transform starts with a channel step so that one transform serves grayscale arrays and
RGB image folders alike (:func:`channel_step`), and normalises with the statistics of
:func:`normalize_stats`, the one place they are defined.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lightly.transforms import SimCLRTransform
from lightly.transforms.multi_view_transform import MultiViewTransform
from PIL import Image
from torchvision import transforms as T

#: One-channel mean/std of the Fashion-MNIST training images, in the format lightly's
#: transforms take for ``normalize=``. :func:`normalize_stats` repeats them per channel.
GRAYSCALE_NORMALIZE: dict[str, list[float]] = {"mean": [0.2860], "std": [0.3530]}
#: What ``posttrain_transform`` accepts as ``kind``.
POSTTRAIN_AUGMENTATIONS = ("none", "light", "simclr")
_CHANNELS = (1, 3)


def _check_channels(in_channels: int) -> None:
    if in_channels not in _CHANNELS:
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels!r}")


def normalize_stats(in_channels: int = 1) -> dict[str, list[float]]:
    """Mean and std per channel, as lightly's ``normalize=`` and ``T.Normalize(**stats)`` take.

    The grayscale statistics are repeated for 3 channels: a 3-channel input here is either a
    grayscale image with its channel repeated or an RGB folder, for which the grayscale
    statistics are as good a guess as any without measuring that folder.

    Args:
        in_channels: 1 or 3.

    Raises:
        ValueError: For another channel count.

    Examples:
        >>> normalize_stats(3)
        {'mean': [0.286, 0.286, 0.286], 'std': [0.353, 0.353, 0.353]}
    """
    _check_channels(in_channels)
    return {key: values * in_channels for key, values in GRAYSCALE_NORMALIZE.items()}


def to_rgb(image: Image.Image) -> Image.Image:
    """Returns ``image`` in PIL mode ``"RGB"``; a grayscale image gets 3 equal channels.

    A top-level function (not a ``T.Lambda``) so that transforms holding it can be pickled
    into ``DataLoader`` worker processes.

    Examples:
        >>> to_rgb(Image.new("L", (2, 2), color=7)).getpixel((0, 0))
        (7, 7, 7)
    """
    return image if image.mode == "RGB" else image.convert("RGB")


def channel_step(in_channels: int) -> Callable[[Image.Image], Image.Image]:
    """The first step of every transform here: PIL image to ``in_channels`` channels.

    One channel uses torchvision's ``Grayscale`` (ITU-R 601-2 luma, as PIL's
    ``convert("L")``); three channels keep an RGB image as it is and repeat a grayscale one.

    Examples:
        >>> channel_step(1)(Image.new("RGB", (4, 4))).mode
        'L'
    """
    _check_channels(in_channels)
    return T.Grayscale(num_output_channels=1) if in_channels == 1 else to_rgb


def simclr_transform(
    input_size: int = 32, in_channels: int = 1, **overrides: Any
) -> SimCLRTransform:
    """Lightly's ``SimCLRTransform`` set up for small grayscale images.

    Defaults differ from lightly's ImageNet ones: no Gaussian blur (it wipes out a
    28x28 image), no hue jitter and no random grayscale (no color to change), color jitter
    strength 0.5 (lightly's advice for small images), crops of at least 20% of the image,
    and Fashion-MNIST normalization. A :func:`channel_step` runs first so that RGB inputs
    (an ``ImageFolder``) give ``in_channels`` channels as well.

    Args:
        input_size: Side of the output views in pixels.
        in_channels: Channels of the output views, 1 or 3.
        **overrides: Any other ``SimCLRTransform`` argument (e.g. ``cj_strength=1.0``).

    Returns:
        A transform mapping a PIL image to a list of two (in_channels, input_size,
        input_size) tensors.

    Examples:
        >>> views = simclr_transform()(Image.new("L", (28, 28)))
        >>> len(views), views[0].shape
        (2, torch.Size([1, 32, 32]))
    """
    kwargs: dict[str, Any] = {
        "input_size": input_size,
        "cj_strength": 0.5,
        "cj_hue": 0.0,
        "min_scale": 0.2,
        "random_gray_scale": 0.0 if in_channels == 1 else 0.2,
        "gaussian_blur": 0.0,
        "vf_prob": 0.0,
        "normalize": normalize_stats(in_channels),
    }
    kwargs.update(overrides)
    transform = SimCLRTransform(**kwargs)
    _prepend_to_views(transform, channel_step(in_channels))
    return transform


def _prepend_to_views(transform: MultiViewTransform, step: Callable[[Any], Any]) -> None:
    # SimCLRTransform shares one view transform between its views; dedupe by id so the
    # step is inserted once per distinct Compose.
    seen: set[int] = set()
    for view in transform.transforms:
        compose = getattr(view, "transform", None)
        steps = getattr(compose, "transforms", None)
        if not isinstance(steps, list):
            raise TypeError(f"Cannot insert {step!r} into view transform {view!r}")
        if id(steps) not in seen:
            seen.add(id(steps))
            steps.insert(0, step)


def eval_transform(input_size: int = 32, in_channels: int = 1) -> T.Compose:
    """Deterministic transform for embedding and evaluation: resize, tensor, normalize.

    Args:
        input_size: Side of the output image in pixels.
        in_channels: Channels of the output, 1 or 3.

    Examples:
        >>> eval_transform()(Image.new("L", (28, 28))).shape
        torch.Size([1, 32, 32])
    """
    return T.Compose(
        [
            channel_step(in_channels),
            T.Resize((input_size, input_size)),
            T.ToTensor(),
            T.Normalize(**normalize_stats(in_channels)),
        ]
    )


def posttrain_transform(
    kind: str, input_size: int = 32, in_channels: int = 1
) -> Callable[[Image.Image], Any]:
    """Transform for the labeled post-training images.

    Args:
        kind: ``"none"`` (the eval transform), ``"light"`` (a random resized crop of at least
            60% of the image and a horizontal flip) or ``"simclr"`` (two SimCLR views, which
            the stage trains on together).
        input_size: Side of the output image in pixels.
        in_channels: Channels of the output, 1 or 3.

    Raises:
        ValueError: For an unknown ``kind``.

    Examples:
        >>> posttrain_transform("light", 16)(Image.new("L", (28, 28))).shape
        torch.Size([1, 16, 16])
    """
    if kind == "none":
        return eval_transform(input_size, in_channels)
    if kind == "simclr":
        return simclr_transform(input_size, in_channels)
    if kind != "light":
        raise ValueError(f"augment must be one of {POSTTRAIN_AUGMENTATIONS}, got {kind!r}")
    return T.Compose(
        [
            channel_step(in_channels),
            T.RandomResizedCrop(input_size, scale=(0.6, 1.0), antialias=True),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(**normalize_stats(in_channels)),
        ]
    )


__all__ = [
    "GRAYSCALE_NORMALIZE",
    "POSTTRAIN_AUGMENTATIONS",
    "channel_step",
    "eval_transform",
    "normalize_stats",
    "posttrain_transform",
    "simclr_transform",
    "to_rgb",
]
