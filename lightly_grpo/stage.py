"""GRPORMStage: the Lightning post-training stage chained after a lightly pretraining recipe."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import pytorch_lightning as pl  # noqa: F401  (used in the docstring example)
import torch
import torch.nn.functional as F
from lightly.models.utils import deactivate_requires_grad
from lightly.utils import dist
from torch import Tensor, nn

from lightly_grpo.distributed import batch_views, check_equal_rows, gather_views
from lightly_grpo.embedding import batch_items, unpack_batch
from lightly_grpo.losses.classification import GRPORMClassificationLoss
from lightly_grpo.losses.policy import GRPORMPolicyLoss
from lightly_grpo.output_sets.base import KeyedOutputSet
from lightly_grpo.posttraining import BATCHNORM_MODES, EmbeddingModel, PostTrainingModule

__all__ = ["BATCHNORM_MODES", "GRPORMStage", "build_criterion"]


def build_criterion(config: dict[str, Any]) -> GRPORMPolicyLoss:
    """Rebuilds a criterion from its ``config()`` (as saved in a checkpoint's hyperparameters)."""
    if "output_set" in config:
        return GRPORMPolicyLoss(**config)
    return GRPORMClassificationLoss(**config)


class GRPORMStage(PostTrainingModule):
    """GRPO-RM post-training of a backbone, given its criterion (and with it, its output set).

    Wraps any backbone (plus an optional projection head); the embeddings are
    ``normalize(head(backbone(x)))``. The criterion holds every setting of the objective
    (output set, reward, temperature, clip range, reference KL, group): a
    :class:`~lightly_grpo.losses.GRPORMClassificationLoss` for class prototypes (the paper's
    setting) or a :class:`~lightly_grpo.losses.GRPORMPolicyLoss` over any output set. Trains with
    AdamW (backbone and criterion parameters in separate groups, see
    :class:`~lightly_grpo.posttraining.PostTrainingModule`), one or several inner GRPO steps per
    batch (the group is sampled once per batch and reused), and logs per step the mean reward,
    policy accuracy, entropy, KL, clip fraction and share of degenerate groups. The logged
    ``train/loss`` is about 0 by construction with one inner step (advantages sum to zero in a
    group); reward, accuracy and entropy show the learning.

    The criterion's config (output set and reward included) is saved in the checkpoint's
    hyperparameters, so ``GRPORMStage.load_from_checkpoint(path, backbone=...)`` rebuilds it.

    Args:
        backbone: Any module mapping images to (B, ...) features.
        criterion: A :class:`~lightly_grpo.losses.GRPORMPolicyLoss`, or its config dict.
        head: Optional projection head applied after the backbone.
        inner_steps: Optimizer steps per batch against the logits frozen at the first step (the
            only case in which the criterion's ``clip_eps`` acts).
        gather_distributed: Under DDP, gather every rank's embeddings (with gradients), labels
            and dataset indices so that each rank computes the loss of the whole global batch:
            a step then equals one process's step on that batch (see
            :mod:`lightly_grpo.distributed`). False keeps each rank's groups local.
        **kwargs: Settings of :class:`~lightly_grpo.posttraining.PostTrainingModule`
            (``lr_backbone``, ``lr_criterion`` for the prototypes, ``weight_decay``,
            ``batchnorm``, ``warmup_steps``, ``lr_schedule``).

    Examples:
        >>> from lightly_grpo.backbones import resnet18_small
        >>> from lightly_grpo.losses import GRPORMClassificationLoss
        >>> criterion = GRPORMClassificationLoss(num_classes=10, embedding_size=512)
        >>> stage = GRPORMStage(resnet18_small(), criterion, inner_steps=2)
        >>> trainer = pl.Trainer(max_epochs=1)  # doctest: +SKIP
        >>> trainer.fit(stage, train_loader)  # doctest: +SKIP
    """

    def __init__(
        self,
        backbone: nn.Module,
        criterion: GRPORMPolicyLoss | dict[str, Any],
        head: nn.Module | None = None,
        inner_steps: int = 1,
        gather_distributed: bool = True,
        **kwargs: Any,
    ) -> None:
        if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 1:
            raise ValueError(f"inner_steps must be >= 1, got {inner_steps!r}")
        if isinstance(criterion, dict):
            criterion = build_criterion(criterion)
        if not isinstance(criterion, GRPORMPolicyLoss):
            raise ValueError(
                f"criterion must be a GRPORMPolicyLoss, got {type(criterion).__name__}"
            )
        super().__init__(
            backbone,
            criterion,
            head=head,
            requires_labels=criterion.output_set.requires_labels,
            **kwargs,
        )
        self.criterion: GRPORMPolicyLoss = criterion
        self.inner_steps = inner_steps
        self.gather_distributed = gather_distributed
        self.save_hyperparameters(ignore=["backbone", "head", "criterion"])
        # The criterion's config carries the output set and the reward: a loaded checkpoint
        # rebuilds exactly the objective it was trained with.
        self.hparams["criterion"] = criterion.config()
        self.reference: EmbeddingModel | None = None
        if criterion.beta > 0:
            # pi_ref is the frozen pretrained model (one forward with the policy's, flatten
            # included) scored against the output set's reference keys.
            self.reference = copy.deepcopy(EmbeddingModel(self.backbone, self.head))
            deactivate_requires_grad(self.reference)
            self.reference.eval()

    # ----------------------------------------------------------------- set-up
    @torch.no_grad()
    def init_criterion(self, loader: Iterable[Any], progress: bool = False) -> None:
        """Initialises the output set from the current embeddings (class means for prototypes)
        and records them as the reference policy's keys."""
        embeddings, labels = self.embed_loader(loader, progress, desc="initialising output set")
        self.criterion.output_set.initialize(embeddings.to(self.device), labels.to(self.device))
        self.criterion.output_set.snapshot_reference()

    @torch.no_grad()
    def classify_embeddings(self, embeddings: Tensor) -> Tensor:
        """The policy's argmax output for each embedding (the class, for class prototypes)."""
        return self.criterion.output_set.predict(F.normalize(embeddings, dim=1))

    def can_predict_classes(self) -> bool:
        """Whether the policy's argmax is a class: a labeled output set with fixed keys (class
        prototypes). A k-means policy predicts clusters, a neighbour policy nothing fixed."""
        output_set = self.criterion.output_set
        return output_set.requires_labels and isinstance(output_set, KeyedOutputSet)

    def train(self, mode: bool = True) -> GRPORMStage:
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # never in training mode: its BN statistics stay as pretrained
        return self

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, labels = unpack_batch(batch, require_labels=self.requires_labels)
        items = batch_items(batch) if self.criterion.output_set.requires_items else None
        views = batch_views(batch)
        gather = self.gather_distributed and dist.world_size() > 1
        if gather:  # the global batch on every rank, in one process's order
            check_equal_rows(len(images), images.device)  # once per step; the gathers skip it
            labels = None if labels is None else gather_views(labels, views, check=False)
            items = None if items is None else gather_views(torch.as_tensor(items), 1, check=False)
        if self.reference is not None:
            self.reference.eval()
        ref_logits = old_logits = group_index = None
        first_stats: dict[str, Tensor] = {}
        clip_fractions = []
        loss = images.new_zeros(())
        for step in range(self.inner_steps):
            embeddings = self(images)  # validated (NaN/inf, labels) inside the criterion
            if gather:
                embeddings = gather_views(embeddings, views, check=False)
            if step == 0 and (self.reference is not None or self.inner_steps > 1):
                # One detached pass over the whole group serves the reference policy, the frozen
                # old policy and the group sample (once per batch, as GRPO samples per prompt).
                full = self.criterion.old_policy(embeddings, labels, items)
                if self.reference is not None:
                    with torch.no_grad():
                        ref_embeddings = self.reference(images)
                        if gather:
                            ref_embeddings = gather_views(ref_embeddings, views, check=False)
                    ref_logits = self.criterion.reference_logits(ref_embeddings, full)
                if self.inner_steps > 1:
                    old_logits = full.similarities / self.criterion.temperature
                    group_index = self.criterion.sample_group_index(old_logits, full.correct)
            loss, stats = self.criterion.forward_with_stats(
                embeddings, labels, old_logits, ref_logits, group_index, items
            )
            self.optimizer_step_on(loss)
            clip_fractions.append(stats["clip_fraction"])
            if step == 0:
                first_stats = stats
        self.step_schedule()
        stats = {**first_stats, "clip_fraction": torch.stack(clip_fractions).mean()}
        self.log_training_stats({**stats, "loss": loss.detach()}, len(images))
        return loss
