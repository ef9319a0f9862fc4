"""The post-training base that GRPO-RM and its baselines stand on.

A comparison between post-training objectives is only fair when everything but the objective is
the same. :class:`PostTrainingModule` owns that shared part: the backbone (+ optional head) and
its embedding, the BatchNorm policy, AdamW with the same parameter groups (weight decay off for
norms, biases and the criterion's own parameters such as prototypes or proxies), the per-step
cosine schedule, the training loop with manual optimisation, validation accuracy and logging.
A subclass supplies :meth:`PostTrainingModule.compute_loss` (and, for a policy with classes,
:meth:`PostTrainingModule.predict_classes`). :class:`~lightly_grpo.stage.GRPORMStage` is one;
cross-entropy, SupCon and ProxyAnchor baselines go in ``lightly_grpo/baselines.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from lightly.models.utils import get_weight_decay_parameters
from torch import Tensor, nn

from lightly_grpo.batchnorm import freeze_batchnorm_stats, recompute_batchnorm_stats
from lightly_grpo.embedding import backbone_features, embed_loader, eval_mode, unpack_batch
from lightly_grpo.evaluation.evaluator import RetrievalEvaluator
from lightly_grpo.evaluation.metrics import KNN_PROTOCOLS
from lightly_grpo.schedules import per_step_cosine

BATCHNORM_MODES = ("freeze", "train", "recompute")
LR_SCHEDULES = ("cosine", "constant")
# Shown in the progress bar: what tells a user the run learns (the GRPO loss is ~0 by design).
PROGRESS_BAR_STATS = ("reward", "accuracy", "entropy")


class EmbeddingModel(nn.Module):
    """``head(flatten(backbone(x)))``: one forward for the policy and its frozen reference."""

    def __init__(self, backbone: nn.Module, head: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head if head is not None else nn.Identity()

    def forward(self, images: Tensor) -> Tensor:
        return backbone_features(self.backbone, self.head, images)


class PostTrainingModule(pl.LightningModule):
    """Backbone (+ head) post-trained with a criterion; the shared half of every method.

    Args:
        backbone: Any module mapping images to (B, ...) features (flattened).
        criterion: The objective's module; its parameters (prototypes, proxies, a classifier)
            train with ``lr_criterion`` and no weight decay.
        head: Optional projection head applied after the backbone.
        lr_backbone: AdamW learning rate of backbone and head.
        lr_criterion: AdamW learning rate of the criterion's parameters.
        weight_decay: AdamW weight decay (not applied to norms, biases and criterion parameters).
        batchnorm: ``"freeze"`` keeps BN running statistics as pretrained (the default: on a small
            labeled set they drift enough to wreck accuracy with no weight update); ``"train"``
            updates them; ``"recompute"`` updates them and expects :meth:`recompute_batchnorm` on
            unlabeled images before evaluation.
        warmup_steps: Linear warmup steps of the cosine schedule.
        lr_schedule: ``"cosine"`` (per step) or ``"constant"``.
        requires_labels: Whether training batches must carry labels.
    """

    def __init__(
        self,
        backbone: nn.Module,
        criterion: nn.Module,
        head: nn.Module | None = None,
        lr_backbone: float = 1e-4,
        lr_criterion: float = 1e-3,
        weight_decay: float = 1e-2,
        batchnorm: str = "freeze",
        warmup_steps: int = 0,
        lr_schedule: str = "cosine",
        requires_labels: bool = True,
    ) -> None:
        super().__init__()
        if batchnorm not in BATCHNORM_MODES:
            raise ValueError(f"batchnorm must be one of {BATCHNORM_MODES}, got {batchnorm!r}")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
        for name, value in (
            ("lr_backbone", lr_backbone),
            ("lr_criterion", lr_criterion),
            ("weight_decay", weight_decay),
        ):
            if not 0 <= value < float("inf"):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.automatic_optimization = False
        self.backbone = backbone
        self.head = head if head is not None else nn.Identity()
        self.criterion = criterion
        self.lr_backbone = float(lr_backbone)
        self.lr_criterion = float(lr_criterion)
        self.weight_decay = float(weight_decay)
        self.batchnorm = batchnorm
        self.warmup_steps = int(warmup_steps)
        self.lr_schedule = lr_schedule
        self.requires_labels = requires_labels

    # ----------------------------------------------------------------- embedding
    def forward(self, images: Tensor) -> Tensor:
        """Unnormalised embeddings ``head(backbone(x))``, shape (B, embedding_size)."""
        return backbone_features(self.backbone, self.head, images)

    def embed(self, images: Tensor) -> Tensor:
        """L2-normalised embeddings (what the policy and the evaluation see)."""
        return F.normalize(self(images), dim=1)

    @torch.no_grad()
    def embed_loader(
        self, loader: Iterable[Any], progress: bool = False, desc: str = "embedding"
    ) -> tuple[Tensor, Tensor]:
        """Embeds a labeled loader in eval mode; returns (embeddings, labels) on the CPU."""
        with eval_mode(self):  # embed_loader normalises: give it the unnormalised forward
            embeddings, labels = embed_loader(self.forward, loader, self.device, progress, desc)
        assert labels is not None  # require_labels=True raised otherwise
        return embeddings, labels

    def policy_modules(self) -> nn.ModuleList:
        """The modules that produce the embeddings (never a frozen reference copy)."""
        return nn.ModuleList([self.backbone, self.head])

    def recompute_batchnorm(
        self, loader: Iterable[Any], max_batches: int | None = None, progress: bool = False
    ) -> int:
        """Re-estimates the BatchNorm statistics of backbone and head on (unlabeled) images.

        Works in every ``batchnorm`` mode and touches nothing else (a reference model keeps
        its statistics).
        """
        return recompute_batchnorm_stats(
            self.policy_modules(),
            loader,
            forward=self.forward,
            max_batches=max_batches,
            progress=progress,
        )

    # ------------------------------------------------------------------ modes
    def _enforce_batchnorm_policy(self) -> None:
        if self.batchnorm == "freeze":
            freeze_batchnorm_stats(self.backbone)
            freeze_batchnorm_stats(self.head)

    def train(self, mode: bool = True) -> PostTrainingModule:
        super().train(mode)
        if mode:
            self._enforce_batchnorm_policy()
        return self

    def on_train_start(self) -> None:
        # Lightning keeps the modes modules had before fit (a model put in eval mode to measure
        # it first would train in eval mode): start in training mode under the BN policy.
        self.train()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Lightning keeps whatever mode each submodule is in (it calls no model.train() at fit
        # start and restores per-module modes after validation), so enforce the BN policy here.
        self._enforce_batchnorm_policy()

    # ------------------------------------------------------------------ training
    def compute_loss(
        self, images: Tensor, labels: Tensor | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The objective on one batch: ``(loss, detached statistics to log)``."""
        raise NotImplementedError

    @torch.no_grad()
    def init_criterion(self, loader: Iterable[Any], progress: bool = False) -> None:
        """Initialises the criterion's parameters from the embeddings of labeled images (e.g.
        prototypes at the class means), before training; the default does nothing."""

    def classify_embeddings(self, embeddings: Tensor) -> Tensor:
        """The model's own class prediction (its head or policy) from unnormalised embeddings
        ``self(images)``, shape (B,). Models without a classifier raise NotImplementedError."""
        raise NotImplementedError(f"{type(self).__name__} has no classifier of its own")

    @torch.no_grad()
    def predict_classes(self, images: Tensor) -> Tensor:
        """The model's own class prediction for each image (its head or policy), shape (B,)."""
        return self.classify_embeddings(self(images))

    def classifier_fn(self) -> Callable[[Tensor], Tensor] | None:
        """:meth:`classify_embeddings` for CPU embeddings (what the evaluation hands over), run
        on the module's device; None for a model without a classifier of its own."""
        if not self.can_predict_classes():
            return None
        device = self.device
        return lambda embeddings: self.classify_embeddings(embeddings.to(device)).cpu()

    def can_predict_classes(self) -> bool:
        """Whether the model has a classifier of its own (:meth:`classify_embeddings`)."""
        return type(self).classify_embeddings is not PostTrainingModule.classify_embeddings

    def optimizer_step_on(self, loss: Tensor) -> None:
        """One AdamW step on ``loss`` (manual optimisation)."""
        optimizer = self.optimizers()
        assert not isinstance(optimizer, list)  # configure_optimizers returns one optimizer
        # Stop before a non-finite loss reaches the weights (one scalar sync per step; the
        # progress bar reads the loss anyway). The last checkpoint on disk stays the last good.
        if not bool(torch.isfinite(loss.detach())):
            raise FloatingPointError(
                f"the loss is {float(loss.detach())} at global step {self.global_step}: "
                "stopping before the optimizer step"
            )
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()

    def step_schedule(self) -> None:
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()  # type: ignore[union-attr]

    def log_training_stats(self, stats: dict[str, Tensor], batch_size: int) -> None:
        """Logs ``train/<name>`` per step and epoch; reward, accuracy, entropy in the bar."""
        logged = {f"train/{name}": value for name, value in stats.items()}
        self.log_dict(logged, on_step=True, on_epoch=True, batch_size=batch_size)
        shown = {name: stats[name] for name in PROGRESS_BAR_STATS if name in stats}
        self.log_dict(shown, prog_bar=True, on_step=True, on_epoch=False, batch_size=batch_size)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, labels = unpack_batch(batch, require_labels=self.requires_labels)
        loss, stats = self.compute_loss(images, labels)
        self.optimizer_step_on(loss)
        self.step_schedule()
        self.log_training_stats({**stats, "loss": loss.detach()}, len(images))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._validation: list[tuple[Tensor, Tensor]] = []

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Logs ``val/accuracy`` (the model's own classifier, where it has one) and keeps the
        embeddings for ``val/knn_top1`` (:meth:`on_validation_epoch_end`)."""
        images, labels = unpack_batch(batch, views="first")
        assert labels is not None
        labels = labels.to(self.device)
        embeddings = self(images)
        if self.can_predict_classes():
            accuracy = (self.classify_embeddings(embeddings) == labels).float().mean()
            # "val/accuracy" pairs with "train/accuracy" in the report's curves.
            self.log("val/accuracy", accuracy, prog_bar=True, batch_size=len(labels))
        self._validation.append((F.normalize(embeddings.float(), dim=1), labels))

    def on_validation_epoch_end(self) -> None:
        """Logs ``val/knn_top1``: the validation images' kNN top-1 among themselves (DINO's
        k = 20, T = 0.07), a curve every method has, with or without a classifier. Under DDP it
        is the mean over the ranks' shards."""
        parts, self._validation = getattr(self, "_validation", []), []
        if not parts:
            return
        embeddings = torch.cat([z for z, _ in parts])
        labels = torch.cat([y for _, y in parts])
        if len(labels) < 2:
            return  # one validation image has no neighbour to vote
        k, temperature = KNN_PROTOCOLS["dino"]
        protocol = (min(k, len(labels) - 1), temperature)
        evaluator = RetrievalEvaluator(
            knn_protocols=(protocol,), retrieval=False, nmi=False, per_class=False
        )
        top1 = evaluator.metric_names()[0]  # knn_top1_k{k}_t{T}
        value = evaluator.evaluate(embeddings, labels).metrics[top1]
        self.log("val/knn_top1", value, sync_dist=True, batch_size=len(labels))

    def parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: backbone+head with / without weight decay, criterion parameters."""
        decay, no_decay = get_weight_decay_parameters([self.backbone, self.head])
        groups = [
            {"name": "backbone", "params": decay, "lr": self.lr_backbone},
            {
                "name": "backbone_no_decay",
                "params": no_decay,
                "lr": self.lr_backbone,
                "weight_decay": 0.0,
            },
            {
                "name": "criterion",
                "params": list(self.criterion.parameters()),
                "lr": self.lr_criterion,
                "weight_decay": 0.0,
            },
        ]
        return [g for g in groups if g["params"]]

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.parameter_groups(), weight_decay=self.weight_decay)
        if self.lr_schedule == "constant":
            return optimizer
        schedule = per_step_cosine(
            optimizer, self.trainer.estimated_stepping_batches, self.warmup_steps
        )
        return {"optimizer": optimizer, "lr_scheduler": schedule}
