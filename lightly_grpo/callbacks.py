"""Lightning callback that tracks kNN and retrieval metrics during training."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from lightly_grpo.evaluation import RetrievalEvaluator


def _images_and_labels(batch: Any) -> tuple[Tensor, Tensor]:
    """``(images, labels)`` of an ``(images, labels, ...)`` batch (first view of a view list)."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ValueError(
            f"evaluation batches must be (images, labels, ...) tuples, got {type(batch).__name__}"
        )
    images, labels = batch[0], batch[1]
    if isinstance(images, (tuple, list)):  # lightly's multi-view batches: (views, labels, ...).
        images = images[0]
    return images, torch.as_tensor(labels)


class RetrievalEvaluationCallback(pl.Callback):
    """Evaluates embeddings every N training epochs and logs kNN and retrieval metrics.

    At the end of every ``every_n_epochs``-th training epoch (and at the start of training with
    ``on_start=True``, to log the baseline) the callback embeds both loaders with
    ``pl_module.embed(images)`` in eval mode under ``no_grad`` (restoring the previous mode
    afterwards), then computes kNN accuracy of the test items against the train items and
    leave-one-out retrieval metrics within the test items, and logs them with
    ``pl_module.log_dict`` under ``prefix``. Every evaluation is also kept in :attr:`history`.

    Each process embeds the full loaders (they are the callback's own, without a distributed
    sampler), so under DDP every rank computes the same numbers.

    Args:
        train_loader: Loader of the kNN bank, batches ``(images, labels, ...)``; images may be a
            list of views (the first view is used), as lightly's transforms produce.
        test_loader: Loader of the queries, same batch format.
        every_n_epochs: Evaluate after every N-th training epoch.
        evaluator: Metric settings; the default is ``RetrievalEvaluator()``. Its kNN protocols
            give the kNN metrics, everything else the test-set retrieval metrics.
        prefix: Prefix of the logged keys, e.g. ``"val/knn_top1_dino"``.
        max_items: Embed at most this many items of each loader.
        on_start: Also evaluate once when training starts (logged at epoch 0).

    Examples:
        >>> callback = RetrievalEvaluationCallback(train_loader, test_loader, every_n_epochs=5)
        >>> trainer = pl.Trainer(max_epochs=20, callbacks=[callback])
        >>> trainer.fit(model, train_dataloaders=loader)  # model defines embed(images)
        >>> callback.history[-1]["val/mean_average_precision_at_r"]
    """

    def __init__(
        self,
        train_loader: Iterable[Any],
        test_loader: Iterable[Any],
        *,
        every_n_epochs: int = 1,
        evaluator: RetrievalEvaluator | None = None,
        prefix: str = "val/",
        max_items: int | None = None,
        on_start: bool = False,
    ) -> None:
        super().__init__()
        if (
            isinstance(every_n_epochs, bool)
            or not isinstance(every_n_epochs, int)
            or every_n_epochs < 1
        ):
            raise ValueError(f"every_n_epochs must be a positive integer, got {every_n_epochs!r}")
        if max_items is not None and max_items < 2:
            raise ValueError(f"max_items must be at least 2 or None, got {max_items}")
        self.train_loader = train_loader
        self.test_loader = test_loader
        self.every_n_epochs = every_n_epochs
        self.evaluator = evaluator if evaluator is not None else RetrievalEvaluator()
        self.prefix = prefix
        self.max_items = max_items
        self.on_start = on_start
        self.history: list[dict[str, float]] = []

    @torch.no_grad()
    def embed(self, pl_module: pl.LightningModule, loader: Iterable[Any]) -> tuple[Tensor, Tensor]:
        """Embeds ``loader`` with ``pl_module.embed``; returns CPU float32 embeddings and labels."""
        embed_fn: Callable[[Tensor], Tensor] | None = getattr(pl_module, "embed", None)
        if not callable(embed_fn):
            raise ValueError(
                f"{type(pl_module).__name__} has no embed(images) method, which "
                "RetrievalEvaluationCallback calls to get (B, D) embeddings"
            )
        embeddings, labels = [], []
        count = 0
        was_training = pl_module.training
        pl_module.eval()
        try:
            for batch in loader:
                images, batch_labels = _images_and_labels(batch)
                out = embed_fn(images.to(pl_module.device))
                embeddings.append(out.detach().float().cpu())
                labels.append(batch_labels.cpu())
                count += len(out)
                if self.max_items is not None and count >= self.max_items:
                    break
        finally:
            pl_module.train(was_training)
        if not embeddings:
            raise ValueError("an evaluation loader yielded no batches")
        emb, lab = torch.cat(embeddings), torch.cat(labels)
        if self.max_items is not None:
            emb, lab = emb[: self.max_items], lab[: self.max_items]
        return emb, lab

    def evaluate(self, pl_module: pl.LightningModule) -> dict[str, float]:
        """Embeds both loaders and returns the metrics (unprefixed keys)."""
        train_emb, train_labels = self.embed(pl_module, self.train_loader)
        test_emb, test_labels = self.embed(pl_module, self.test_loader)
        ev = self.evaluator
        metrics: dict[str, float] = {}
        if ev.protocols:
            knn = RetrievalEvaluator(
                knn_protocols=ev.knn_protocols,
                backend=ev.backend,
                chunk_size=ev.chunk_size,
                nmi=False,
                per_class=False,
                retrieval=False,
            ).evaluate(test_emb, test_labels, train_emb, train_labels)
            metrics.update(knn.metrics)
        if ev.retrieval or ev.nmi:
            retrieval = RetrievalEvaluator(
                recall_at=ev.recall_at,
                knn_protocols=(),
                backend=ev.backend,
                chunk_size=ev.chunk_size,
                nmi=ev.nmi,
                num_clusters=ev.num_clusters,
                seed=ev.seed,
                per_class=False,
                retrieval=ev.retrieval,
            ).evaluate(test_emb, test_labels)
            metrics.update(retrieval.metrics)
        return metrics

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        metrics = {f"{self.prefix}{k}": v for k, v in self.evaluate(pl_module).items()}
        pl_module.log_dict(metrics, on_step=False, on_epoch=True)
        self.history.append({"epoch": float(epoch), **metrics})

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.on_start:
            self._run(trainer, pl_module, epoch=0)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        completed = trainer.current_epoch + 1
        if completed % self.every_n_epochs == 0:
            self._run(trainer, pl_module, epoch=completed)
