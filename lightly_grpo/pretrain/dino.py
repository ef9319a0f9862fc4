"""DINO from lightly's pieces: a student and its momentum teacher, with multi-crop views.

The student (``backbone`` + ``student_head``) learns to predict, from every view of an image,
the teacher's centred and sharpened output on the two global views. The teacher
(``teacher_backbone`` + ``teacher_head``) is never trained by gradients: it follows the student
as an exponential moving average, and is the backbone DINO keeps.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import (
    deactivate_requires_grad,
    update_momentum,
)
from lightly.transforms import DINOTransform
from lightly.utils.scheduler import cosine_schedule
from PIL import Image
from torch import Tensor, nn

from lightly_grpo.data.transforms import _prepend_to_views, channel_step, normalize_stats
from lightly_grpo.pretrain.base import (
    DEFAULT_PRETRAIN_LR,
    DEFAULT_PRETRAIN_WEIGHT_DECAY,
    PretrainMethod,
    adamw_cosine,
)

#: Smallest side of a local view: below it a 28 px image's crop holds next to nothing.
MIN_LOCAL_CROP_SIZE = 8


def dino_transform(input_size: int = 32, in_channels: int = 1, **overrides: Any) -> DINOTransform:
    """Lightly's ``DINOTransform`` set up for small grayscale images.

    Two global views of ``input_size`` pixels and, by default, two local views (lightly's
    default is six; two keep a CPU step affordable) of ``max(8, input_size // 2)`` pixels. As
    for SimCLR here, and unlike lightly's ImageNet defaults: no Gaussian blur and no
    solarization (they wipe out a 28 px image), no hue jitter, no random grayscale for one
    channel, color jitter strength 0.5, and Fashion-MNIST normalization. Crop scales stay
    lightly's (global 0.4-1, local 0.05-0.4). A channel step runs first in every view, so RGB
    inputs give ``in_channels`` channels as well.

    Args:
        input_size: Side of the global views in pixels.
        in_channels: Channels of the output views, 1 or 3.
        **overrides: Any other ``DINOTransform`` argument (e.g. ``n_local_views=6``). Note that
            lightly passes ``cj_strength`` to the first global and the local views only.

    Returns:
        A transform mapping a PIL image to a list of ``2 + n_local_views`` tensors, the two
        global views first.

    Raises:
        ValueError: For ``input_size < 1`` or ``in_channels`` not 1 or 3.

    Examples:
        >>> views = dino_transform(28)(Image.new("L", (28, 28)))
        >>> len(views), views[0].shape, views[-1].shape
        (4, torch.Size([1, 28, 28]), torch.Size([1, 14, 14]))
    """
    if input_size < 1:
        raise ValueError(f"input_size must be >= 1, got {input_size}")
    step = channel_step(in_channels)  # checks in_channels before anything is built
    kwargs: dict[str, Any] = {
        "global_crop_size": input_size,
        "local_crop_size": max(MIN_LOCAL_CROP_SIZE, input_size // 2),
        "n_local_views": 2,
        "cj_strength": 0.5,
        "cj_hue": 0.0,
        "random_gray_scale": 0.0 if in_channels == 1 else 0.2,
        "gaussian_blur": (0.0, 0.0, 0.0),
        "solarization_prob": 0.0,
        "normalize": normalize_stats(in_channels),
    }
    kwargs.update(overrides)
    transform = DINOTransform(**kwargs)
    _prepend_to_views(transform, step)
    return transform


class DINOModule(pl.LightningModule):
    """DINO (lightly's ``DINOProjectionHead``, ``DINOLoss``, a momentum teacher) on any backbone.

    The student's backbone is ``self.backbone`` (checkpoint prefix ``backbone.``) and the
    teacher's ``self.teacher_backbone`` (prefix ``teacher_backbone.``), the one DINO evaluates.
    The head and output sizes are far below the paper's (2048-256-65536) so that a step runs on
    a CPU.

    Args:
        backbone: Module mapping images to (B, feature_dim) features (or (B, feature_dim, 1, 1),
            which is flattened). The teacher starts as a copy of it.
        feature_dim: Backbone output dimension.
        hidden_dim: Hidden size of the projection heads.
        bottleneck_dim: Bottleneck size before the heads' weight-normalised last layer.
        output_dim: Output size of the heads (the number of DINO "prototypes").
        lr: AdamW learning rate (cosine schedule with warmup), for the student only.
        weight_decay: AdamW weight decay (not on norms and biases).
        warmup_steps: Linear learning-rate warmup steps.
        momentum_start: Teacher EMA momentum at the first step; it follows a cosine schedule
            over the training steps.
        momentum_end: Teacher EMA momentum at the last step.
        teacher_temp: Teacher softmax temperature after its warmup.
        warmup_teacher_temp: Teacher temperature at epoch 0 (linear to ``teacher_temp``).
        warmup_teacher_temp_epochs: Epochs of the teacher-temperature warmup.
        student_temp: Student softmax temperature.
        freeze_last_layer: Epochs during which the student head's last layer is not updated
            (its gradients are cancelled), which stabilises the start of training.

    Examples:
        >>> model = DINOModule(nn.Sequential(nn.Flatten(), nn.Linear(16, 8)), feature_dim=8)
        >>> images = torch.zeros(4, 1, 4, 4)
        >>> model(images).shape, model.forward_teacher(images).shape
        (torch.Size([4, 2048]), torch.Size([4, 2048]))
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int = 512,
        hidden_dim: int = 512,
        bottleneck_dim: int = 64,
        output_dim: int = 2048,
        lr: float = DEFAULT_PRETRAIN_LR,
        weight_decay: float = DEFAULT_PRETRAIN_WEIGHT_DECAY,
        warmup_steps: int = 0,
        momentum_start: float = 0.996,
        momentum_end: float = 1.0,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: int = 0,
        student_temp: float = 0.1,
        freeze_last_layer: int = 1,
    ) -> None:
        super().__init__()
        for name, value in (("momentum_start", momentum_start), ("momentum_end", momentum_end)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        self.save_hyperparameters(ignore=["backbone"])
        self.backbone = backbone
        self.student_head = DINOProjectionHead(
            feature_dim, hidden_dim, bottleneck_dim, output_dim, freeze_last_layer=freeze_last_layer
        )
        self.teacher_backbone = copy.deepcopy(backbone)
        # The head's weight-normalised last layer cannot be deep-copied; a twin built the same
        # way and given the student's weights starts the teacher equal to the student.
        self.teacher_head = DINOProjectionHead(feature_dim, hidden_dim, bottleneck_dim, output_dim)
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)
        self.criterion = DINOLoss(
            output_dim=output_dim,
            warmup_teacher_temp=warmup_teacher_temp,
            teacher_temp=teacher_temp,
            warmup_teacher_temp_epochs=warmup_teacher_temp_epochs,
            student_temp=student_temp,
        )

    def forward(self, images: Tensor) -> Tensor:
        """The student's output for a batch of views."""
        return self.student_head(self.backbone(images).flatten(start_dim=1))

    @torch.no_grad()
    def forward_teacher(self, images: Tensor) -> Tensor:
        """The teacher's output for a batch of views (no gradients)."""
        return self.teacher_head(self.teacher_backbone(images).flatten(start_dim=1))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        views = batch[0]
        if not isinstance(views, (tuple, list)) or len(views) < 2:
            raise ValueError(
                "DINO needs batches of at least two views, the two global ones first (use "
                f"lightly's DINOTransform), got {type(views).__name__}"
                + (f" of length {len(views)}" if isinstance(views, (tuple, list)) else "")
            )
        # As lightly's example: the teacher follows the student before this step's update.
        momentum = cosine_schedule(
            self.global_step,
            max(1, int(self.trainer.estimated_stepping_batches)),
            self.hparams["momentum_start"],
            self.hparams["momentum_end"],
        )
        update_momentum(self.backbone, self.teacher_backbone, m=momentum)
        update_momentum(self.student_head, self.teacher_head, m=momentum)
        teacher_out = [self.forward_teacher(view) for view in views[:2]]
        # One pass per view, as lightly's example: BatchNorm sees each view's batch alone.
        student_out = [self(view) for view in views]
        loss = self.criterion(teacher_out, student_out, epoch=self.current_epoch)
        self.log("train/dino_loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        self.log("train/teacher_momentum", momentum, on_step=True, on_epoch=False)
        return loss

    def on_after_backward(self) -> None:
        self.student_head.cancel_last_layer_gradients(current_epoch=self.current_epoch)

    def configure_optimizers(self) -> Any:
        return adamw_cosine(self, [self.backbone, self.student_head])


class DINOMethod(PretrainMethod):
    """DINO as a :class:`~lightly_grpo.pretrain.base.PretrainMethod`; the teacher is exported.

    Examples:
        >>> method = DINOMethod()
        >>> method.backbone_prefix, method.backbone_prefixes["student"]
        ('teacher_backbone.', 'backbone.')
        >>> len(method.transform(16)(Image.new("L", (8, 8))))
        4
    """

    name = "dino"
    module_class = DINOModule
    backbone_prefix = "teacher_backbone."
    #: Checkpoint prefix of each backbone in a :class:`DINOModule`, for picking either one.
    backbone_prefixes: ClassVar[dict[str, str]] = {
        "teacher": "teacher_backbone.",
        "student": "backbone.",
    }

    def transform(self, input_size: int = 32, in_channels: int = 1) -> Callable[[Image.Image], Any]:
        return dino_transform(input_size, in_channels)


__all__ = ["DINOMethod", "DINOModule", "dino_transform"]
