"""Self-supervised pretraining methods, the step before GRPO-RM post-training.

The chain that pretrains looks a method up by name and asks it for everything
method-specific::

    method = get_pretrain_method("simclr")
    transform = method.transform(input_size, in_channels)      # the views the loss needs
    module = method.build_module(backbone, feature_dim, lr=1e-3)  # a LightningModule
    trainer.fit(module, loader)
    export_backbone(method.backbone(module), "backbone.pt")
    # method.backbone_prefix is the checkpoint's backbone key prefix for load_backbone

Adding a recipe takes one new file and one line, as DINO did (lightly's
``DINOProjectionHead``, ``DINOLoss``, ``DINOTransform`` and a momentum teacher):

1. ``lightly_grpo/pretrain/dino.py``: the Lightning module, whose constructor takes
   ``(backbone, feature_dim, **hyperparameters)``, and a ``PretrainMethod`` subclass that sets
   ``name = "dino"``, ``module_class`` and, since the teacher is the backbone to keep,
   ``backbone_prefix = "teacher_backbone."``, and implements ``transform``;
2. ``lightly_grpo/pretrain/registry.py``: import that class and add an instance to
   ``_METHODS``, from which ``PRETRAIN_METHODS`` is built.

Examples:
    >>> sorted(PRETRAIN_METHODS)
    ['dino', 'simclr']
"""

from __future__ import annotations

from lightly_grpo.pretrain.base import PretrainMethod
from lightly_grpo.pretrain.dino import DINOMethod, DINOModule, dino_transform
from lightly_grpo.pretrain.registry import PRETRAIN_METHODS, get_pretrain_method
from lightly_grpo.pretrain.simclr import SimCLRMethod, SimCLRModule

__all__ = [
    "DINOMethod",
    "DINOModule",
    "PRETRAIN_METHODS",
    "PretrainMethod",
    "SimCLRMethod",
    "SimCLRModule",
    "dino_transform",
    "get_pretrain_method",
]
