"""What a pretraining method provides, so one training loop serves every recipe.

A method is a small object with a name, the view transform its loss needs, a Lightning module
class built around any backbone, and the checkpoint prefix of the backbone to keep. The chain
that pretrains (build backbone, wrap, fit, export) only ever talks to this interface.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from lightly.models.utils import get_weight_decay_parameters
from PIL import Image
from torch import nn

from lightly_grpo.schedules import per_step_cosine

# Constructor arguments that build_module fills itself, so they are no hyperparameters.
_BUILD_ARGUMENTS = ("self", "backbone", "feature_dim")


class PretrainMethod(ABC):
    """A self-supervised pretraining recipe made of lightly's pieces.

    Subclasses set :attr:`name` and :attr:`module_class` and implement :meth:`transform`; a
    module whose evaluated backbone is not ``self.backbone`` (e.g. a DINO teacher) also sets
    :attr:`backbone_prefix`.

    Examples:
        >>> import torch
        >>> class Tiny(pl.LightningModule):
        ...     def __init__(self, backbone: nn.Module, feature_dim: int, lr: float = 0.1):
        ...         super().__init__()
        ...         self.backbone = backbone
        >>> class TinyMethod(PretrainMethod):
        ...     name = "tiny"
        ...     module_class = Tiny
        ...     def transform(self, input_size=32, in_channels=1):
        ...         return lambda image: image
        >>> method = TinyMethod()
        >>> method.hyperparameters()
        {'lr': 0.1}
        >>> module = method.build_module(nn.Linear(2, 2), feature_dim=2, lr=0.5)
        >>> method.backbone(module) is module.backbone
        True
    """

    #: Registry key and the name the command line uses.
    name: ClassVar[str]
    #: The Lightning module; its constructor takes ``(backbone, feature_dim, **hyperparameters)``.
    module_class: ClassVar[type[pl.LightningModule]]
    #: Where the backbone to keep sits in the module, as a ``state_dict`` key prefix: what
    #: :func:`lightly_grpo.backbones.load_backbone` takes as ``prefix`` for its checkpoints.
    backbone_prefix: ClassVar[str] = "backbone."

    @abstractmethod
    def transform(self, input_size: int = 32, in_channels: int = 1) -> Callable[[Image.Image], Any]:
        """The view transform the method's loss needs (e.g. two SimCLR views per image)."""

    def hyperparameters(self) -> dict[str, Any]:
        """The module's tunable constructor arguments and their defaults, in order."""
        parameters = inspect.signature(self.module_class.__init__).parameters.values()
        return {
            p.name: p.default
            for p in parameters
            if p.name not in _BUILD_ARGUMENTS and p.kind is p.POSITIONAL_OR_KEYWORD
        }

    def build_module(
        self, backbone: nn.Module, feature_dim: int, **hyperparameters: Any
    ) -> pl.LightningModule:
        """Wraps ``backbone`` (features of size ``feature_dim``) in the method's module.

        Raises:
            ValueError: For a hyperparameter the module does not take; the message lists those
                it does.
        """
        known = self.hyperparameters()
        unknown = sorted(set(hyperparameters) - set(known))
        if unknown:
            raise ValueError(
                f"{self.name} has no hyperparameter(s) {unknown}; known: {sorted(known)}"
            )
        if feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1, got {feature_dim}")
        return self.module_class(backbone, feature_dim=feature_dim, **hyperparameters)

    def backbone(self, module: pl.LightningModule) -> nn.Module:
        """The backbone inside a module built by :meth:`build_module` (what gets exported)."""
        return module.get_submodule(self.backbone_prefix.removesuffix("."))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


#: The AdamW settings every pretraining recipe starts from (``adamw_cosine`` reads them from the
#: module's hyperparameters).
DEFAULT_PRETRAIN_LR = 1e-3
DEFAULT_PRETRAIN_WEIGHT_DECAY = 1e-4


def adamw_cosine(module: pl.LightningModule, trained: list[nn.Module]) -> dict[str, Any]:
    """What every recipe's ``configure_optimizers`` returns: AdamW over ``trained`` (weight decay
    off for norms and biases, as lightly's ``get_weight_decay_parameters`` splits them) with the
    per-step cosine schedule, from the module's ``lr``, ``weight_decay`` and ``warmup_steps``
    hyperparameters."""
    decay, no_decay = get_weight_decay_parameters(trained)
    optimizer = torch.optim.AdamW(
        [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=module.hparams["lr"],
        weight_decay=module.hparams["weight_decay"],
    )
    schedule = per_step_cosine(
        optimizer, module.trainer.estimated_stepping_batches, module.hparams["warmup_steps"]
    )
    return {"optimizer": optimizer, "lr_scheduler": schedule}


__all__ = [
    "DEFAULT_PRETRAIN_LR",
    "DEFAULT_PRETRAIN_WEIGHT_DECAY",
    "PretrainMethod",
    "adamw_cosine",
]
