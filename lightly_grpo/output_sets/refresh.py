"""Refreshing an output set from the current model: embed the training set, rebuild the set.

:func:`embed_bank` embeds a dataset in order (eval mode, no augmentation, batched) and, under
DDP, splits the work: rank r embeds items r, r + W, r + 2W, ... and the shards are gathered and
interleaved back (:func:`lightly_grpo.distributed.gather_shards`), so every rank ends with the
same bank in dataset order. :class:`OutputSetRefresh` calls it between epochs and hands the bank to
``output_set.refresh``.
"""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightly_grpo.data.neighbor_sampler import NeighborBatchSampler
from lightly_grpo.distributed import (
    broadcast_buffers,
    interleave_shards,
)
from lightly_grpo.embedding import embed_dataset, eval_mode
from lightly_grpo.output_sets.neighbors import NeighborOutputSet

# interleave_shards moved to lightly_grpo.distributed; re-exported for existing imports.
__all__ = [
    "MineFromOutputSet",
    "OutputSetRefresh",
    "embed_bank",
    "interleave_shards",
    "mine_from_output_set",
]


@torch.no_grad()
def embed_bank(
    module: Any,
    dataset: Dataset[Any],
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = False,
) -> Tensor:
    """L2-normalised embeddings (N, D) of every item of ``dataset``, in dataset order, on the
    module's device; identical on every DDP rank.

    Args:
        module: A :class:`~lightly_grpo.posttraining.PostTrainingModule` (its ``forward``
            embeds images; it is put in eval mode for the pass and restored after).
        dataset: The training items with an evaluation transform (one view, no augmentation).
        batch_size: Images per forward pass.
        num_workers: DataLoader workers.
        progress: Show a tqdm bar.
    """
    with eval_mode(module):
        embeddings, _ = embed_dataset(
            module.forward,
            dataset,
            module.device,
            batch_size,
            num_workers,
            progress,
            desc="refreshing output set",
            require_labels=False,
        )
    return embeddings.to(module.device)


def mine_from_output_set(trainer: pl.Trainer | None, pl_module: Any) -> bool:
    """Points the trainer's :class:`~lightly_grpo.data.NeighborBatchSampler` at the neighbour
    table of the module's output set; returns whether there was one to point.

    The sampler is built from a table before ``fit``; by the time training starts the module may
    hold another one: restored from a checkpoint, or (under DDP) broadcast from rank 0 when
    Lightning wraps the module, so every rank mines from the table the loss rewards.
    """
    output_set = getattr(getattr(pl_module, "criterion", None), "output_set", None)
    sampler = getattr(getattr(trainer, "train_dataloader", None), "batch_sampler", None)
    if isinstance(sampler, NeighborBatchSampler) and isinstance(output_set, NeighborOutputSet):
        sampler.set_neighbors(output_set.neighbors.cpu())
        return True
    return False


class MineFromOutputSet(pl.Callback):
    """At the start of training, mines the neighbour batches from the module's own (restored or
    rank-0-broadcast) table: :func:`mine_from_output_set` as a callback, for runs without an
    :class:`OutputSetRefresh` (which does the same).

    Examples:
        >>> trainer = pl.Trainer(callbacks=[MineFromOutputSet()])  # doctest: +SKIP
    """

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        mine_from_output_set(trainer, pl_module)


class OutputSetRefresh(pl.Callback):
    """Rebuilds the stage's output set from the current model every ``every_n_epochs`` epochs.

    The refresh runs at the end of a training epoch (not after the last one), embeds ``dataset``
    with :func:`embed_bank` and calls ``output_set.refresh(bank)``; the rebuilt set (neighbour
    table, centroids) lives in buffers, so Lightning checkpoints save and restore it. The time
    each refresh took is logged as ``refresh/seconds`` and kept in :attr:`seconds`.

    Args:
        dataset: The training items with an evaluation transform, in the order the training
            batches' dataset indices refer to.
        every_n_epochs: Refresh period in epochs (>= 1).
        batch_size: Images per forward pass of the embedding.
        num_workers: DataLoader workers of the embedding.
        progress: Show a tqdm bar while embedding.

    Examples:
        >>> refresh = OutputSetRefresh(bank_dataset, every_n_epochs=2)  # doctest: +SKIP
        >>> pl.Trainer(max_epochs=6, callbacks=[refresh]).fit(stage, loader)  # doctest: +SKIP
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        every_n_epochs: int = 1,
        batch_size: int = 256,
        num_workers: int = 0,
        progress: bool = False,
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.every_n_epochs = every_n_epochs
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.progress = progress
        self.seconds: list[float] = []

    def refresh(self, pl_module: Any, trainer: pl.Trainer | None = None) -> float:
        """Embeds the dataset and refreshes the output set now; returns the seconds it took.

        When the trainer's training batches come from a
        :class:`~lightly_grpo.data.NeighborBatchSampler`, it mines from the new table too.
        """
        output_set = pl_module.criterion.output_set
        if not output_set.refreshable:
            raise ValueError(f"{type(output_set).__name__} cannot be refreshed from a bank")
        started = time.perf_counter()
        bank = embed_bank(pl_module, self.dataset, self.batch_size, self.num_workers, self.progress)
        output_set.refresh(bank)
        # Every rank built it from the same gathered bank; rank 0's copy makes that exact (under
        # Lightning's manual optimisation DDP broadcasts buffers at the first forward only).
        broadcast_buffers(output_set)
        mine_from_output_set(trainer, pl_module)
        seconds = time.perf_counter() - started
        self.seconds.append(seconds)
        return seconds

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A resumed run restores the refreshed table from its checkpoint after the loader was
        # built from the pretrained one: mine from the restored table.
        mine_from_output_set(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        max_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        last = (max_epochs is not None and epoch >= max_epochs) or (
            0 < trainer.max_steps <= trainer.global_step
        )
        if epoch % self.every_n_epochs != 0 or last:
            return
        seconds = self.refresh(pl_module, trainer)
        pl_module.log("refresh/seconds", seconds, on_step=False, on_epoch=True, sync_dist=False)

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": list(self.seconds)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seconds = list(state_dict.get("seconds", []))
