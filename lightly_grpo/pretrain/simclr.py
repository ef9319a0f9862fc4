"""SimCLR from lightly's pieces: the recipe GRPO-RM is chained after by default."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from PIL import Image
from torch import Tensor, nn

from lightly_grpo.data.transforms import simclr_transform
from lightly_grpo.pretrain.base import (
    DEFAULT_PRETRAIN_LR,
    DEFAULT_PRETRAIN_WEIGHT_DECAY,
    PretrainMethod,
    adamw_cosine,
)


class SimCLRModule(pl.LightningModule):
    """SimCLR (lightly's ``SimCLRProjectionHead`` + ``NTXentLoss``) around any backbone.

    The checkpoint that Lightning writes has the backbone under the ``backbone.`` prefix, which is
    what :func:`lightly_grpo.backbones.load_backbone` reads.

    Args:
        backbone: Module mapping images to (B, feature_dim) features (or (B, feature_dim, 1, 1),
            which is flattened).
        feature_dim: Backbone output dimension.
        hidden_dim: Hidden size of the projection head.
        output_dim: Output size of the projection head.
        temperature: NT-Xent temperature.
        lr: AdamW learning rate (cosine schedule with warmup).
        weight_decay: AdamW weight decay (not on norms and biases).
        warmup_steps: Linear warmup steps.
        gather_distributed: Under DDP, gather every rank's projections so the negatives are the
            global batch (lightly's ``NTXentLoss(gather_distributed=True)``); no effect in one
            process.

    Examples:
        >>> import torch
        >>> model = SimCLRModule(nn.Sequential(nn.Flatten(), nn.Linear(16, 8)), feature_dim=8)
        >>> model(torch.zeros(4, 1, 4, 4)).shape
        torch.Size([4, 128])
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int = 512,
        hidden_dim: int = 512,
        output_dim: int = 128,
        temperature: float = 0.2,
        lr: float = DEFAULT_PRETRAIN_LR,
        weight_decay: float = DEFAULT_PRETRAIN_WEIGHT_DECAY,
        warmup_steps: int = 0,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(feature_dim, hidden_dim, output_dim)
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=gather_distributed)

    def forward(self, images: Tensor) -> Tensor:
        return self.projection_head(self.backbone(images).flatten(start_dim=1))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        views = batch[0]
        if not isinstance(views, (tuple, list)) or len(views) != 2:
            raise ValueError(
                "SimCLR needs batches of two views (use lightly's SimCLRTransform), got "
                f"{type(views).__name__}"
                + (f" of length {len(views)}" if isinstance(views, (tuple, list)) else "")
            )
        # Two forward passes, as lightly's example: BatchNorm sees each view's batch alone.
        z0, z1 = self(views[0]), self(views[1])
        loss = self.criterion(z0, z1)
        self.log("train/ntxent", loss, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    def configure_optimizers(self) -> Any:
        return adamw_cosine(self, [self.backbone, self.projection_head])


class SimCLRMethod(PretrainMethod):
    """SimCLR as a :class:`~lightly_grpo.pretrain.base.PretrainMethod`.

    Examples:
        >>> views = SimCLRMethod().transform(16)(Image.new("L", (8, 8)))
        >>> len(views), views[0].shape
        (2, torch.Size([1, 16, 16]))
    """

    name = "simclr"
    module_class = SimCLRModule

    def transform(self, input_size: int = 32, in_channels: int = 1) -> Callable[[Image.Image], Any]:
        return simclr_transform(input_size, in_channels)


__all__ = ["SimCLRMethod", "SimCLRModule"]
