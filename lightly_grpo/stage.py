"""GRPORMStage: the Lightning post-training stage chained after a lightly pretraining recipe."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from lightly.models.utils import deactivate_requires_grad, get_weight_decay_parameters
from torch import Tensor, nn
from tqdm.auto import tqdm

from lightly_grpo.batchnorm import freeze_batchnorm_stats, recompute_batchnorm_stats
from lightly_grpo.classification_loss import GRPORMClassificationLoss
from lightly_grpo.rewards import Reward
from lightly_grpo.schedules import per_step_cosine

BATCHNORM_MODES = ("freeze", "train", "recompute")


def split_batch(batch: Any) -> tuple[Tensor, Tensor]:
    """Images and labels from a lightly-style batch.

    Accepts ``(images, labels, ...)`` where images is a tensor or a list of views (lightly's
    multi-view transforms); views are concatenated and the labels repeated to match.
    """
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ValueError(
            f"expected a batch (images, labels, ...), got {type(batch).__name__} "
            f"of length {len(batch) if isinstance(batch, (tuple, list)) else 'n/a'}"
        )
    images, labels = batch[0], batch[1]
    if isinstance(images, (tuple, list)):
        if len(images) == 0:
            raise ValueError("got an empty list of views")
        labels = labels.repeat(len(images))
        images = torch.cat(list(images), dim=0)
    if images.shape[0] == 0:
        raise ValueError(f"empty batch: images have shape {tuple(images.shape)}")
    return images, labels


class GRPORMStage(pl.LightningModule):
    """GRPO-RM post-training of a backbone with class prototypes as the output set.

    Wraps any backbone (plus an optional projection head); the embeddings are
    ``normalize(head(backbone(x)))``. Trains with AdamW (backbone and prototypes in separate
    parameter groups), one or several inner GRPO steps per batch, and logs per step the mean reward,
    policy entropy, clip fraction, share of degenerate groups and the train accuracy of the
    policy's argmax.

    BatchNorm (DESIGN.md 1.4): ``batchnorm="freeze"`` (default) keeps BN layers in eval mode while
    training, so the running statistics stay as pretrained; ``"train"`` updates them as usual;
    ``"recompute"`` updates them and expects :meth:`recompute_batchnorm` on unlabeled images before
    evaluation.

    Args:
        backbone: Any module mapping images to (B, ...) features.
        num_classes: Number of classes.
        embedding_size: Dimension of the embeddings (head output, or backbone output).
        head: Optional projection head applied after the backbone.
        temperature: Policy temperature tau.
        reward: Reward object (default accuracy + uniformity, -pi_old, lambda = 1).
        clip_eps: PPO clip range.
        beta: Weight of the KL to the frozen pretrained model (0 drops the reference model).
        inner_steps: Optimizer steps per batch against the logits frozen at the first step.
        group_size: None enumerates every class; an integer samples that many per query.
        lr_backbone: AdamW learning rate for backbone and head.
        lr_prototypes: AdamW learning rate for the prototypes.
        weight_decay: AdamW weight decay (not applied to norms, biases and prototypes).
        batchnorm: "freeze", "train" or "recompute".
        warmup_steps: Linear warmup steps of the cosine learning-rate schedule.
        lr_schedule: "cosine" or "constant".
        compile_loss: ``torch.compile`` the loss's fused math (fewer GPU kernel launches).

    Examples:
        >>> from lightly_grpo.backbones import resnet18_small
        >>> stage = GRPORMStage(resnet18_small(), num_classes=10, embedding_size=512)
        >>> trainer = pl.Trainer(max_epochs=1)  # doctest: +SKIP
        >>> trainer.fit(stage, train_loader)  # doctest: +SKIP
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        embedding_size: int,
        head: nn.Module | None = None,
        temperature: float = 0.1,
        reward: Reward | None = None,
        clip_eps: float = 0.2,
        beta: float = 0.0,
        inner_steps: int = 1,
        group_size: int | None = None,
        lr_backbone: float = 1e-4,
        lr_prototypes: float = 1e-3,
        weight_decay: float = 1e-2,
        batchnorm: str = "freeze",
        warmup_steps: int = 0,
        lr_schedule: str = "cosine",
        compile_loss: bool = False,
    ) -> None:
        super().__init__()
        if batchnorm not in BATCHNORM_MODES:
            raise ValueError(f"batchnorm must be one of {BATCHNORM_MODES}, got {batchnorm!r}")
        if inner_steps < 1:
            raise ValueError(f"inner_steps must be >= 1, got {inner_steps}")
        if lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
        for name, value in (("lr_backbone", lr_backbone), ("lr_prototypes", lr_prototypes)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.save_hyperparameters(ignore=["backbone", "head", "reward"])
        self.automatic_optimization = False
        self.backbone = backbone
        self.head = head if head is not None else nn.Identity()
        self.criterion = GRPORMClassificationLoss(
            num_classes,
            embedding_size,
            temperature=temperature,
            reward=reward,
            clip_eps=clip_eps,
            beta=beta,
            group_size=group_size,
            compile_math=compile_loss,
        )
        self.reference: nn.Module | None = None
        if beta > 0:
            # pi_ref is the frozen pretrained model with the prototypes it started from.
            self.reference = copy.deepcopy(nn.Sequential(self.backbone, self.head))
            deactivate_requires_grad(self.reference)
            self.reference_keys: Tensor
            self.register_buffer("reference_keys", self.criterion.prototypes.keys().detach())

    # ----------------------------------------------------------------- embedding
    def forward(self, images: Tensor) -> Tensor:
        """Unnormalised embeddings ``head(backbone(x))``, shape (B, embedding_size)."""
        return self.head(self.backbone(images).flatten(start_dim=1))

    def embed(self, images: Tensor) -> Tensor:
        """L2-normalised embeddings (what the policy and the evaluation see)."""
        return F.normalize(self(images), dim=1)

    @torch.no_grad()
    def embed_loader(
        self, loader: Iterable[Any], progress: bool = False, desc: str = "embedding"
    ) -> tuple[Tensor, Tensor]:
        """Embeds a labeled loader in eval mode; returns (embeddings, labels) on the CPU."""
        was_training = self.training
        self.eval()
        chunks, labels = [], []
        try:
            for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
                images, targets = batch[0], batch[1]
                if isinstance(images, (tuple, list)):
                    images = images[0]
                chunks.append(self.embed(images.to(self.device)).float().cpu())
                labels.append(torch.as_tensor(targets).cpu())
        finally:
            self.train(was_training)
        if not chunks:
            raise ValueError("the loader yielded no batches")
        return torch.cat(chunks), torch.cat(labels).long()

    @torch.no_grad()
    def init_prototypes(self, loader: Iterable[Any], progress: bool = False) -> None:
        """Initialises the class prototypes to the class means of the current embeddings."""
        embeddings, labels = self.embed_loader(loader, progress, desc="class means")
        self.criterion.init_prototypes(embeddings.to(self.device), labels.to(self.device))
        if self.reference is not None:
            self.reference_keys.copy_(self.criterion.prototypes.keys().detach())

    @torch.no_grad()
    def predict_classes(self, images: Tensor) -> Tensor:
        """The prototype policy's argmax class for each image."""
        return self.criterion.prototypes.predict(self.embed(images))

    def recompute_batchnorm(
        self, loader: Iterable[Any], max_batches: int | None = None, progress: bool = False
    ) -> int:
        """Re-estimates the backbone's BatchNorm statistics on (unlabeled) images."""
        return recompute_batchnorm_stats(
            self, loader, forward=self.forward, max_batches=max_batches, progress=progress
        )

    def train(self, mode: bool = True) -> GRPORMStage:
        super().train(mode)
        if mode and self.hparams["batchnorm"] == "freeze":
            freeze_batchnorm_stats(self.backbone)
            freeze_batchnorm_stats(self.head)
        if self.reference is not None:
            self.reference.eval()
        return self

    # ------------------------------------------------------------------ training
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Lightning keeps whatever mode each submodule is in (it calls no model.train() at fit
        # start and restores per-module modes after validation), so enforce the BN policy here.
        if self.hparams["batchnorm"] == "freeze":
            freeze_batchnorm_stats(self.backbone)
            freeze_batchnorm_stats(self.head)
        if self.reference is not None:
            self.reference.eval()

    def _reference_logits(self, images: Tensor) -> Tensor | None:
        if self.reference is None:
            return None
        with torch.no_grad():
            z = F.normalize(self.reference(images).flatten(start_dim=1), dim=1)
            return z @ self.reference_keys.t() / self.criterion.temperature

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, labels = split_batch(batch)
        optimizer = self.optimizers()
        assert not isinstance(optimizer, list)  # configure_optimizers returns one optimizer
        ref_logits = self._reference_logits(images)
        old_logits: Tensor | None = None
        first_stats: dict[str, Tensor] = {}
        clip_fractions = []
        loss = images.new_zeros(())
        for step in range(self.hparams["inner_steps"]):
            embeddings = self(images)  # validated (NaN/inf, labels) inside the criterion
            if self.hparams["inner_steps"] > 1 and old_logits is None:
                old_logits = self.criterion.logits(embeddings).detach()
            loss, stats = self.criterion.forward_with_stats(
                embeddings, labels, old_logits, ref_logits
            )
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
            clip_fractions.append(stats["clip_fraction"])
            if step == 0:
                first_stats = stats
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()  # type: ignore[union-attr]
        logged = {f"train/{k}": v for k, v in first_stats.items() if k != "clip_fraction"}
        logged["train/clip_fraction"] = torch.stack(clip_fractions).mean()
        logged["train/loss"] = loss.detach()
        self.log_dict(logged, prog_bar=False, on_step=True, on_epoch=True, batch_size=len(labels))
        self.log("reward", first_stats["reward"], prog_bar=True, on_step=True, on_epoch=False)
        self.log("acc", first_stats["accuracy"], prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, labels = split_batch(batch)
        predictions = self.predict_classes(images)
        accuracy = (predictions == labels).float().mean()
        # "val/accuracy" pairs with "train/accuracy" in the report's curves.
        self.log("val/accuracy", accuracy, prog_bar=True, batch_size=len(labels))

    def configure_optimizers(self) -> Any:
        decay, no_decay = get_weight_decay_parameters([self.backbone, self.head])
        groups = [
            {"params": decay, "lr": self.hparams["lr_backbone"]},
            {"params": no_decay, "lr": self.hparams["lr_backbone"], "weight_decay": 0.0},
            {
                "params": list(self.criterion.parameters()),
                "lr": self.hparams["lr_prototypes"],
                "weight_decay": 0.0,
            },
        ]
        groups = [g for g in groups if g["params"]]
        optimizer = torch.optim.AdamW(groups, weight_decay=self.hparams["weight_decay"])
        if self.hparams["lr_schedule"] == "constant":
            return optimizer
        schedule = per_step_cosine(
            optimizer, self.trainer.estimated_stepping_batches, self.hparams["warmup_steps"]
        )
        return {"optimizer": optimizer, "lr_scheduler": schedule}
