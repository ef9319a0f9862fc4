"""Baselines on the post-training base of GRPO-RM: a comparison differs in the objective only.

Each baseline is a :class:`~lightly_grpo.posttraining.PostTrainingModule`, so it shares the
backbone handling, BatchNorm policy, AdamW parameter groups, schedule and logging with
:class:`~lightly_grpo.stage.GRPORMStage`:

- :class:`CrossEntropyBaseline`: cross-entropy fine-tuning of backbone + a linear head (the
  paper's baseline), or of the same cosine-prototype head GRPO-RM uses (``head="prototypes"``).
- :class:`MetricLossBaseline`: fine-tuning with a pytorch-metric-learning loss, e.g.
  ``SupConLoss`` or ``ProxyAnchorLoss`` (whose proxies train in the criterion's group).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightly_grpo.output_sets.class_prototypes import ClassPrototypes
from lightly_grpo.posttraining import PostTrainingModule
from lightly_grpo.validation import check_labels

CLASSIFIER_HEADS = ("linear", "prototypes")


class CrossEntropyBaseline(PostTrainingModule):
    """Cross-entropy fine-tuning of the backbone with a classifier head.

    Args:
        backbone: Any module mapping images to (B, ...) features.
        num_classes: Number of classes.
        embedding_size: Dimension of the embeddings.
        classifier: ``"linear"`` (a linear layer on the embeddings) or ``"prototypes"`` (cosine
            similarity to learnable unit class prototypes divided by ``temperature``, the head
            GRPO-RM's policy uses).
        temperature: Temperature of the prototype head.
        **kwargs: Settings of :class:`~lightly_grpo.posttraining.PostTrainingModule`
            (``head``, ``lr_backbone``, ``lr_criterion``, ``weight_decay``, ``batchnorm``, ...).

    Examples:
        >>> from lightly_grpo.backbones import resnet18_small
        >>> model = CrossEntropyBaseline(resnet18_small(), num_classes=10, embedding_size=512)
        >>> model.predict_classes(torch.randn(2, 1, 32, 32)).shape
        torch.Size([2])
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        embedding_size: int,
        classifier: str = "linear",
        temperature: float = 0.1,
        **kwargs: Any,
    ) -> None:
        if classifier not in CLASSIFIER_HEADS:
            raise ValueError(f"classifier must be one of {CLASSIFIER_HEADS}, got {classifier!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        criterion: nn.Module = (
            nn.Linear(embedding_size, num_classes)
            if classifier == "linear"
            else ClassPrototypes(num_classes, embedding_size)
        )
        super().__init__(backbone, criterion, **kwargs)
        self.num_classes = num_classes
        self.classifier = classifier
        self.temperature = float(temperature)
        self.save_hyperparameters(ignore=["backbone", "head"])

    def class_logits(self, embeddings: Tensor) -> Tensor:
        """Classifier logits (B, num_classes) of unnormalised embeddings."""
        if isinstance(self.criterion, ClassPrototypes):
            return self.criterion.similarities(embeddings) / self.temperature
        return self.criterion(embeddings)

    def compute_loss(
        self, images: Tensor, labels: Tensor | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        assert labels is not None
        check_labels(labels, self.num_classes, len(images))
        logits = self.class_logits(self(images))
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        return loss, {"accuracy": accuracy}

    @torch.no_grad()
    def predict_classes(self, images: Tensor) -> Tensor:
        return self.class_logits(self(images)).argmax(dim=1)


class MetricLossBaseline(PostTrainingModule):
    """Fine-tuning with a pytorch-metric-learning loss called as ``loss(embeddings, labels)``.

    Args:
        backbone: Any module mapping images to (B, ...) features.
        loss: e.g. ``pytorch_metric_learning.losses.SupConLoss(temperature=0.1)`` or
            ``ProxyAnchorLoss(num_classes, embedding_size)``; its parameters (proxies) train
            with ``lr_criterion``.
        **kwargs: Settings of :class:`~lightly_grpo.posttraining.PostTrainingModule`.

    Examples:
        >>> from pytorch_metric_learning.losses import SupConLoss
        >>> from lightly_grpo.backbones import resnet18_small
        >>> model = MetricLossBaseline(resnet18_small(), SupConLoss(temperature=0.1))
    """

    def __init__(self, backbone: nn.Module, loss: nn.Module, **kwargs: Any) -> None:
        super().__init__(backbone, loss, **kwargs)

    def compute_loss(
        self, images: Tensor, labels: Tensor | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        assert labels is not None
        return self.criterion(self(images), labels), {}
