"""Gathering a training batch across DDP ranks, so a group sees the whole global batch.

Under DDP every rank holds ``b`` images of the global batch (``W * b`` images). GRPO-RM's groups
compare each query with outputs that may live on other ranks (the other images of the batch for
the neighbour output set, the batch's Sinkhorn assignment for k-means prototypes), so the stage
gathers the embeddings of every rank, differentiably (lightly's ``GatherLayer``, as lightly's
``NTXentLoss(gather_distributed=True)`` does), and every rank computes the loss of the *global*
batch. The backward of the gather sums each rank's gradients (``all_reduce``) and DDP averages the
parameter gradients, so each rank ends with exactly the single-process gradient of that loss.

Rows are ordered as one process would see the global batch: views first, then rank, then the
rank's images (``[view 0 of rank 0, view 0 of rank 1, ..., view 1 of rank 0, ...]``).
"""

from __future__ import annotations

from typing import Any

import torch
from lightly.utils import dist
from torch import Tensor, nn

__all__ = [
    "batch_views",
    "broadcast_buffers",
    "gather_shards",
    "gather_views",
    "interleave_shards",
    "is_global_zero",
    "check_equal_rows",
    "rank_shard",
]


def batch_views(batch: Any) -> int:
    """The number of views of a lightly-style batch: ``len(images)`` for a list of views, else 1.

    Examples:
        >>> batch_views(([torch.zeros(2, 3), torch.zeros(2, 3)], torch.tensor([0, 1])))
        2
        >>> batch_views((torch.zeros(2, 3), torch.tensor([0, 1])))
        1
    """
    images = batch[0] if isinstance(batch, (tuple, list)) else batch
    return len(images) if isinstance(images, (tuple, list)) else 1


def check_equal_rows(rows: int, device: torch.device | str | None = None) -> None:
    """ValueError unless every rank holds ``rows`` rows (one small collective; without a process
    group it does nothing). Unequal shapes would make ``all_gather`` fail or hang. ``device``:
    where the collective runs (NCCL needs a CUDA device; default CPU, for gloo).

    Examples:
        >>> check_equal_rows(8)  # one process: nothing to compare
    """
    if dist.world_size() == 1:
        return
    sizes = torch.tensor([rows], device=device)
    gathered = [torch.zeros_like(sizes) for _ in range(dist.world_size())]
    torch.distributed.all_gather(gathered, sizes)
    counts = [int(size) for size in gathered]
    if len(set(counts)) > 1:
        raise ValueError(
            f"every DDP rank must hold the same number of rows to gather a batch, got {counts} "
            "(use drop_last=True for the training loader)"
        )


def gather_views(x: Tensor, num_views: int = 1, check: bool = True) -> Tensor:
    """Gathers rows from every rank in single-process order; differentiable.

    Args:
        x: (V * b, ...) rows of this rank: ``num_views`` views of ``b`` images, view-major (as
            :func:`~lightly_grpo.embedding.unpack_batch` concatenates them).
        num_views: V.
        check: First verify that every rank holds as many rows (one small extra collective);
            unequal shapes would otherwise make ``all_gather`` fail or hang.

    Returns:
        (V * W * b, ...): view 0 of every rank's images, then view 1, ...; ``x`` itself without a
        process group.

    Raises:
        ValueError: If the rows are not a multiple of ``num_views`` or differ between ranks.

    Examples:
        >>> gather_views(torch.arange(4), num_views=2).tolist()  # one process: unchanged
        [0, 1, 2, 3]
    """
    if num_views < 1 or x.shape[0] % num_views != 0:
        raise ValueError(
            f"{x.shape[0]} rows are not {num_views} views of the same images (shape "
            f"{tuple(x.shape)})"
        )
    if dist.world_size() == 1:
        return x
    if check:
        check_equal_rows(x.shape[0], x.device)
    per_rank = dist.gather(x.contiguous())  # W tensors (V * b, ...)
    views = [rank_rows.chunk(num_views) for rank_rows in per_rank]
    return torch.cat([views[r][v] for v in range(num_views) for r in range(len(views))])


def is_global_zero() -> bool:
    """Whether this process is rank 0 (the one that writes reports and exports); True without a
    process group.

    Examples:
        >>> is_global_zero()
        True
    """
    return dist.rank() == 0


def rank_shard(total: int) -> range:
    """The dataset positions this rank embeds when a pass is split across ranks: ``rank, rank +
    W, ...`` (every position without a process group).

    Raises:
        ValueError: If some rank would get no item (``total < W``).

    Examples:
        >>> rank_shard(5)
        range(0, 5)
    """
    world = dist.world_size()
    if total < world:
        raise ValueError(f"a pass over {total} items cannot be split across {world} ranks")
    return range(dist.rank(), total, world)


def interleave_shards(shards: list[Tensor], total: int) -> Tensor:
    """Puts rank-strided shards back in dataset order: shard r holds items r, r + W, ...

    Shards may be padded at the end to equal length (``all_gather`` needs equal shapes); only
    the first ``total`` items are kept.

    Examples:
        >>> interleave_shards([torch.tensor([0, 2, 4]), torch.tensor([1, 3, -1])], 5).tolist()
        [0, 1, 2, 3, 4]
    """
    stacked = torch.stack(shards, dim=1)  # (per_rank, W, ...)
    return stacked.reshape(-1, *stacked.shape[2:])[:total]


@torch.no_grad()
def gather_shards(local: Tensor, total: int, device: torch.device | str | None = None) -> Tensor:
    """All ``total`` rows in dataset order on every rank, from this rank's :func:`rank_shard`.

    Args:
        local: This rank's rows (its shard of a pass over ``total`` items, in order).
        total: Items of the whole pass.
        device: Where the collective runs (NCCL needs CUDA tensors); default ``local.device``.
            The result is returned on ``local``'s device.

    Examples:
        >>> gather_shards(torch.arange(3), 3).tolist()  # one process: unchanged
        [0, 1, 2]
    """
    world = dist.world_size()
    if world == 1:
        return local
    per_rank = -(-total // world)
    if len(local) != len(rank_shard(total)):
        raise ValueError(
            f"rank {dist.rank()} holds {len(local)} rows, expected {len(rank_shard(total))} of "
            f"{total}"
        )
    padded = local.new_zeros(per_rank, *local.shape[1:], device=device or local.device)
    padded[: len(local)] = local
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    torch.distributed.all_gather(gathered, padded)
    return interleave_shards(gathered, total).to(local.device)


@torch.no_grad()
def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copies every buffer of ``module`` from rank ``src`` to the other ranks, in place (nothing
    without a process group). For state that DDP is told not to broadcast at every forward (an
    output set's neighbour table or centroids), synchronised at the moments it changes instead.

    Examples:
        >>> broadcast_buffers(nn.BatchNorm1d(4))  # one process: nothing to copy
    """
    if dist.world_size() == 1:
        return
    for buffer in module.buffers():
        torch.distributed.broadcast(buffer, src=src)
