"""Baselines on the post-training base of GRPO-RM: a comparison differs in the objective only.

Each baseline is a :class:`~lightly_grpo.posttraining.PostTrainingModule`, so it shares the
backbone handling, BatchNorm policy, AdamW parameter groups, schedule and logging with
:class:`~lightly_grpo.stage.GRPORMStage`:

- :class:`CrossEntropyBaseline`: cross-entropy fine-tuning of backbone + a linear head (the
  paper's baseline), or of the same cosine-prototype head GRPO-RM uses (``head="prototypes"``).
- :class:`LinearProbeBaseline`: a linear classifier on the frozen backbone.
- :class:`MetricLossBaseline`: fine-tuning with a pytorch-metric-learning loss, e.g.
  ``SupConLoss`` or ``ProxyAnchorLoss`` (whose proxies train in the criterion's group).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from lightly.utils import dist
from torch import Tensor, nn

from lightly_grpo.distributed import check_equal_rows, gather_views
from lightly_grpo.losses.policy import DEFAULT_TEMPERATURE
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
        temperature: float = DEFAULT_TEMPERATURE,
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

    @torch.no_grad()
    def init_criterion(self, loader: Iterable[Any], progress: bool = False) -> None:
        """Puts the prototype head's keys at the class means (as GRPO-RM's prototypes start);
        a linear head keeps its random initialisation."""
        if isinstance(self.criterion, ClassPrototypes):
            embeddings, labels = self.embed_loader(loader, progress, desc="initialising head")
            self.criterion.initialize(embeddings.to(self.device), labels.to(self.device))

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
    def classify_embeddings(self, embeddings: Tensor) -> Tensor:
        return self.class_logits(embeddings).argmax(dim=1)


class LinearProbeBaseline(CrossEntropyBaseline):
    """A linear classifier trained with cross-entropy on the frozen backbone (the linear probe).

    The backbone (and head) get no gradient and stay in eval mode, so their weights and
    BatchNorm statistics are exactly the pretrained ones: the embeddings, and every kNN and
    retrieval metric of them, are the pretrained backbone's; only the classifier accuracy is
    the probe's own. It shares the loop, augmentation and schedule with the other methods.

    Args:
        backbone: Any module mapping images to (B, ...) features.
        num_classes: Number of classes.
        embedding_size: Dimension of the embeddings.
        **kwargs: Settings of :class:`CrossEntropyBaseline` (``lr_criterion`` is the probe's
            learning rate; ``lr_backbone`` is ignored).

    Examples:
        >>> from lightly_grpo.backbones import resnet18_small
        >>> probe = LinearProbeBaseline(resnet18_small(), num_classes=10, embedding_size=512)
        >>> [group["name"] for group in probe.parameter_groups()]
        ['criterion']
    """

    def __init__(
        self, backbone: nn.Module, num_classes: int, embedding_size: int, **kwargs: Any
    ) -> None:
        super().__init__(backbone, num_classes, embedding_size, classifier="linear", **kwargs)
        for module in (self.backbone, self.head):
            module.requires_grad_(False)

    def train(self, mode: bool = True) -> LinearProbeBaseline:
        super().train(mode)
        # Frozen means frozen: BatchNorm and dropout of the backbone behave as at evaluation.
        self.backbone.eval()
        self.head.eval()
        return self

    def forward(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            return super().forward(images)

    def parameter_groups(self) -> list[dict[str, Any]]:
        return [g for g in super().parameter_groups() if g["name"] == "criterion"]


class MetricLossBaseline(PostTrainingModule):
    """Fine-tuning with a pytorch-metric-learning loss called as ``loss(embeddings, labels)``.

    Args:
        backbone: Any module mapping images to (B, ...) features.
        loss: e.g. ``pytorch_metric_learning.losses.SupConLoss(temperature=0.1)`` or
            ``ProxyAnchorLoss(num_classes, embedding_size)``; its parameters (proxies) train
            with ``lr_criterion``.
        gather_distributed: Under DDP, compute the loss on every rank's embeddings and labels
            (gathered with gradients, as :class:`~lightly_grpo.stage.GRPORMStage` does), so the
            pairs and negatives span the global batch and a step equals one process's on it.
        **kwargs: Settings of :class:`~lightly_grpo.posttraining.PostTrainingModule`.

    Examples:
        >>> from pytorch_metric_learning.losses import SupConLoss
        >>> from lightly_grpo.backbones import resnet18_small
        >>> model = MetricLossBaseline(resnet18_small(), SupConLoss(temperature=0.1))
    """

    def __init__(
        self, backbone: nn.Module, loss: nn.Module, gather_distributed: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(backbone, loss, **kwargs)
        self.gather_distributed = gather_distributed

    def can_predict_classes(self) -> bool:
        # A proxy loss (ProxyAnchor, ProxyNCA) has one learned proxy per class: its classifier.
        proxies = getattr(self.criterion, "proxies", None)
        return isinstance(proxies, Tensor) and proxies.dim() == 2

    @torch.no_grad()
    def classify_embeddings(self, embeddings: Tensor) -> Tensor:
        """The nearest proxy by cosine similarity (loss functions with class proxies only)."""
        if not self.can_predict_classes():
            raise NotImplementedError(f"{type(self.criterion).__name__} has no class proxies")
        proxies = getattr(self.criterion, "proxies")  # noqa: B009 - an nn.Module attribute
        proxies = F.normalize(proxies.to(embeddings), dim=1)
        return (F.normalize(embeddings, dim=1) @ proxies.t()).argmax(dim=1)

    def compute_loss(
        self, images: Tensor, labels: Tensor | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        assert labels is not None
        embeddings = self(images)
        if self.gather_distributed and dist.world_size() > 1:
            # Rank-major rows (rank 0's views, then rank 1's): pair and proxy losses sum over
            # anchors and pairs, so the row order does not change the loss.
            check_equal_rows(len(images), images.device)
            embeddings = gather_views(embeddings, check=False)
            labels = gather_views(labels.to(embeddings.device), check=False)
        return self.criterion(embeddings, labels), {}
