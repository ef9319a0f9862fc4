"""Lightning callback that tracks kNN and retrieval metrics during training."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytorch_lightning as pl
from torch import Tensor

from lightly_grpo.embedding import embed_loader, eval_mode
from lightly_grpo.evaluation import RetrievalEvaluator, evaluate_against_bank


class RetrievalEvaluationCallback(pl.Callback):
    """Evaluates embeddings every N training epochs and logs kNN and retrieval metrics.

    At the end of every ``every_n_epochs``-th training epoch (and at the start of training with
    ``on_start=True``, to log the baseline) the callback embeds both loaders with
    ``pl_module.embed(images)`` in eval mode under ``no_grad`` (restoring every submodule's
    previous mode afterwards), then computes kNN accuracy of the test items against the train
    items and leave-one-out retrieval metrics within the test items
    (:func:`~lightly_grpo.evaluation.evaluate_against_bank`), and logs them with
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
        Needs loaders and a LightningModule that defines ``embed(images)``:

        >>> callback = RetrievalEvaluationCallback(train_loader, test_loader, every_n_epochs=5)
        ... # doctest: +SKIP
        >>> trainer = pl.Trainer(max_epochs=20, callbacks=[callback])  # doctest: +SKIP
        >>> trainer.fit(model, train_dataloaders=loader)  # doctest: +SKIP
        >>> callback.history[-1]["val/mean_average_precision_at_r"]  # doctest: +SKIP
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

    def embed(self, pl_module: pl.LightningModule, loader: Iterable[Any]) -> tuple[Tensor, Tensor]:
        """Embeds ``loader`` with ``pl_module.embed`` in eval mode without gradients.

        Returns:
            L2-normalised CPU float32 embeddings (at most ``max_items``) and their labels.
        """
        embed_fn: Callable[[Tensor], Tensor] | None = getattr(pl_module, "embed", None)
        if not callable(embed_fn):
            raise ValueError(
                f"{type(pl_module).__name__} has no embed(images) method, which "
                "RetrievalEvaluationCallback calls to get (B, D) embeddings"
            )
        with eval_mode(pl_module):
            embeddings, labels = embed_loader(
                embed_fn, loader, device=pl_module.device, max_items=self.max_items
            )
        assert labels is not None  # embed_loader raises on unlabeled batches.
        return embeddings, labels

    def evaluate(self, pl_module: pl.LightningModule) -> dict[str, float]:
        """Embeds both loaders and returns the metrics (unprefixed keys)."""
        train_emb, train_labels = self.embed(pl_module, self.train_loader)
        test_emb, test_labels = self.embed(pl_module, self.test_loader)
        result = evaluate_against_bank(
            test_emb, test_labels, train_emb, train_labels, self.evaluator.replace(per_class=False)
        )
        return result.metrics

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
