"""BatchNorm handling for post-training on small labeled sets (``docs/method.md``, "BatchNorm").

Post-training on a few thousand labeled images shifts BatchNorm running statistics enough to wreck
accuracy with no weight update at all. Two remedies: keep BN layers in eval mode while training
(``freeze_batchnorm_stats``), or re-estimate the statistics on unlabeled images afterwards
(``recompute_batchnorm_stats``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lightly_grpo.embedding import unpack_batch


def batchnorm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """All BatchNorm layers (1d/2d/3d, SyncBatchNorm) inside ``module``."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def freeze_batchnorm_stats(module: nn.Module) -> None:
    """Puts every BatchNorm layer in eval mode: running statistics stay as pretrained.

    The affine parameters still train. Call it after every ``module.train()``.
    """
    for layer in batchnorm_layers(module):
        layer.eval()


@torch.no_grad()
def recompute_batchnorm_stats(
    module: nn.Module,
    batches: Iterable[Any],
    forward: Callable[[Tensor], Any] | None = None,
    max_batches: int | None = None,
    progress: bool = False,
) -> int:
    """Re-estimates BatchNorm running statistics as an exact average over ``batches``.

    Only the BatchNorm layers are put in training mode (everything else, dropout included, runs
    in eval mode), directly on each layer: a parent's ``train()`` may be overridden to keep BN
    frozen, as the post-training stage's is. Every submodule's mode is restored afterwards.

    Args:
        module: The model whose BN layers are reset and re-estimated.
        batches: Iterable of image tensors or ``(images, ...)`` tuples (unlabeled is fine); a list
            of views (lightly format) uses the first view.
        forward: Function that runs the images through the model; default ``module``.
        max_batches: Stop after this many batches.
        progress: Show a tqdm bar.

    Returns:
        The number of batches used.

    Examples:
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
        >>> recompute_batchnorm_stats(model, [torch.randn(8, 1, 8, 8)])
        1
    """
    layers = batchnorm_layers(module)
    if not layers:
        return 0
    modes = [(m, m.training) for m in module.modules()]
    momenta = [layer.momentum for layer in layers]
    for submodule in module.modules():
        submodule.training = False
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # None = cumulative moving average, i.e. the exact mean
        layer.training = True
    run = forward if forward is not None else module
    device = next(module.parameters()).device
    used = 0
    try:
        for batch in tqdm(batches, desc="re-estimating BatchNorm", disable=not progress):
            images, _ = unpack_batch(batch, require_labels=False, views="first")
            run(images.to(device))
            used += 1
            if max_batches is not None and used >= max_batches:
                break
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        for submodule, mode in modes:
            submodule.training = mode
    if used == 0:
        raise ValueError("recompute_batchnorm_stats got no batches; BN statistics are reset")
    return used
