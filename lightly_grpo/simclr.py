"""SimCLR pretraining from lightly's pieces, the recipe GRPO-RM is chained after."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.models.utils import get_weight_decay_parameters
from torch import Tensor, nn

from lightly_grpo.schedules import per_step_cosine


class SimCLRModule(pl.LightningModule):
    """SimCLR (lightly's ``SimCLRProjectionHead`` + ``NTXentLoss``) around any backbone.

    The checkpoint that Lightning writes has the backbone under the ``backbone.`` prefix, which is
    what :func:`lightly_grpo.backbones.load_backbone` reads.

    Args:
        backbone: Module mapping images to (B, feature_dim) features.
        feature_dim: Backbone output dimension.
        hidden_dim: Hidden size of the projection head.
        output_dim: Output size of the projection head.
        temperature: NT-Xent temperature.
        lr: AdamW learning rate (cosine schedule with warmup).
        weight_decay: AdamW weight decay (not on norms and biases).
        warmup_steps: Linear warmup steps.

    Examples:
        >>> from lightly_grpo.backbones import resnet18_small
        >>> model = SimCLRModule(resnet18_small(), feature_dim=512)
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int = 512,
        hidden_dim: int = 512,
        output_dim: int = 128,
        temperature: float = 0.2,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(feature_dim, hidden_dim, output_dim)
        self.criterion = NTXentLoss(temperature=temperature)

    def forward(self, images: Tensor) -> Tensor:
        return self.projection_head(self.backbone(images).flatten(start_dim=1))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        views = batch[0]
        if not isinstance(views, (tuple, list)) or len(views) != 2:
            raise ValueError(
                "SimCLR needs batches of two views (use lightly's SimCLRTransform), got "
                f"{type(views).__name__}"
            )
        z0, z1 = self(views[0]), self(views[1])
        loss = self.criterion(z0, z1)
        self.log("train/ntxent", loss, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    def configure_optimizers(self) -> Any:
        decay, no_decay = get_weight_decay_parameters([self.backbone, self.projection_head])
        optimizer = torch.optim.AdamW(
            [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams["lr"],
            weight_decay=self.hparams["weight_decay"],
        )
        schedule = per_step_cosine(
            optimizer, self.trainer.estimated_stepping_batches, self.hparams["warmup_steps"]
        )
        return {"optimizer": optimizer, "lr_scheduler": schedule}
