"""Neighbour-mined batches for unlabeled GRPO-RM post-training.

Unlabeled GRPO-RM rewards the candidates of a batch that are nearest neighbours of the query in
the frozen pretrained embedding space. A random batch of 256 out of 60,000 images holds almost no
such neighbours, so the batches are mined instead: :class:`NeighborBatchSampler` builds each batch
from "anchors", drawn without replacement from a seeded permutation of the dataset, each followed
by neighbours drawn from its row of a precomputed neighbour table. :func:`reference_neighbors`
computes that table by exact cosine kNN.

Layout of a full batch of ``batch_size`` indices with ``m = neighbors_per_anchor`` and
``G = batch_size // (1 + m)`` groups::

    [a_0, n_0_1, ..., n_0_m, a_1, n_1_1, ..., n_1_m, ..., a_G-1, ..., n_G-1_m, s_0, ..., s_r-1]

that is G groups of an anchor and its m neighbours, then ``r = batch_size - G * (1 + m)`` further
anchors without neighbours that fill the batch. :meth:`NeighborBatchSampler.batch_layout` returns
these positions for any batch the sampler yields (the last one of an epoch may be shorter).

Examples:
    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> embeddings = torch.randn(100, 16)
    >>> neighbors = reference_neighbors(embeddings, k=5)
    >>> sampler = NeighborBatchSampler(neighbors, batch_size=32, seed=0)
    >>> loader = DataLoader(TensorDataset(embeddings), batch_sampler=sampler)
    >>> len(loader), next(iter(loader))[0].shape
    (6, torch.Size([32, 16]))
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from lightly.utils import dist
from torch import Tensor
from torch.utils.data import Sampler

from lightly_grpo.index.search import knn_search
from lightly_grpo.validation import check_embeddings, check_int

__all__ = ["NeighborBatchSampler", "reference_neighbors"]


def _neighbor_table(neighbors: object) -> np.ndarray:
    """The validated (N, k) neighbour table as a private int64 numpy copy."""
    if isinstance(neighbors, Sampler):
        # Lightning re-creates a batch sampler as ``cls(sampler, batch_size=..., drop_last=...)``
        # when it injects a DistributedSampler; say how to avoid that instead of a dtype error.
        raise ValueError(
            "neighbors must be an (N, k) integer tensor, got a sampler "
            f"({type(neighbors).__name__}); under Lightning DDP build the Trainer with "
            "use_distributed_sampler=False (the sampler reads its rank from the process group)"
        )
    if isinstance(neighbors, Tensor):
        if neighbors.dtype.is_floating_point or neighbors.dtype.is_complex:
            raise ValueError(f"neighbors must hold integer indices, got dtype {neighbors.dtype}")
        if neighbors.dtype == torch.bool:
            raise ValueError("neighbors must hold integer indices, got dtype torch.bool")
        table = neighbors.detach().cpu().numpy()
    elif isinstance(neighbors, np.ndarray):
        if not np.issubdtype(neighbors.dtype, np.integer):
            raise ValueError(f"neighbors must hold integer indices, got dtype {neighbors.dtype}")
        table = neighbors
    else:
        raise ValueError(
            f"neighbors must be an (N, k) integer torch.Tensor, got {type(neighbors).__name__}"
        )
    if table.ndim != 2 or table.shape[0] == 0 or table.shape[1] == 0:
        raise ValueError(
            "neighbors must be 2-D (N, k) with N >= 1 items and k >= 1 neighbours per item, "
            f"got shape {tuple(table.shape)}"
        )
    num_items = table.shape[0]
    low, high = int(table.min()), int(table.max())
    if low < 0 or high >= num_items:
        raise ValueError(
            f"neighbors must hold dataset indices in [0, {num_items}) (N = number of rows), "
            f"got values in [{low}, {high}]"
        )
    table = table.astype(np.int64, copy=True)
    own = (table == np.arange(num_items)[:, None]).any(axis=1)
    if own.any():
        # A table searched without leaving each item out lists the item as its own (closest)
        # neighbour; pairing an anchor with itself would silently waste a slot of every group.
        rows = np.flatnonzero(own)
        raise ValueError(
            "row i of neighbors must not contain i (search with exclude_self=True), but "
            f"{rows.size} rows do, first row {int(rows[0])}: {table[rows[0]].tolist()}"
        )
    return table


class NeighborBatchSampler(Sampler[list[int]]):
    """Batches of anchors, each followed by neighbours from a precomputed kNN table.

    Every batch takes its anchors without replacement from one permutation of all N items,
    seeded by ``seed + epoch`` like ``torch.utils.data.DistributedSampler``, so every item is an
    anchor once per epoch (with ``drop_last=False``). A full batch holds
    ``groups_per_batch = batch_size // (1 + neighbors_per_anchor)`` anchors, each followed by
    ``neighbors_per_anchor`` distinct entries of its neighbour row drawn uniformly, then
    ``batch_size - groups_per_batch * (1 + neighbors_per_anchor)`` further anchors without
    neighbours that fill the batch; ``anchors_per_batch`` counts both kinds. See the module doc
    for the layout and :meth:`batch_layout` for the positions.

    Duplicates within a batch: anchors are distinct. A drawn neighbour that is already in the
    batch (one of its anchors, or a neighbour drawn for an earlier anchor) is replaced by the
    next entry of its row in the random draw order that is not; when the row has no such entry
    left, the drawn neighbours are kept, so an index repeats only when its row leaves no choice.
    The replacement makes the draw slightly non-uniform where rows overlap the batch, which is
    rare when N is much larger than the batch.

    Epoch length: ``ceil(N / anchors_per_batch)`` batches with ``drop_last=False`` (the last one
    holds the leftover anchors and is shorter: its anchors are grouped with their neighbours
    first, up to ``groups_per_batch``, the rest fill as above), ``floor(N / anchors_per_batch)``
    with ``drop_last=True`` (the ``N mod anchors_per_batch`` items at the end of the permutation,
    different ones each epoch, are not anchors in that epoch, though they can still be drawn as
    neighbours).

    Distributed training: all ranks draw the same permutation and the same batches, and rank r
    takes batches ``r, r + num_replicas, ...``. Each rank gets ``floor(batches / num_replicas)``
    batches, so the tail batches that do not fill a round are dropped on every rank, also with
    ``drop_last=False``. Left at None, ``num_replicas`` and ``rank`` are read from the default
    process group each time the sampler is iterated or measured (as
    ``torch.utils.data.DistributedSampler`` reads them, but late), so a sampler built before
    Lightning starts its processes shards once they run. Under Lightning DDP build the
    ``Trainer`` with ``use_distributed_sampler=False``, or Lightning tries to replace it.

    Use it as ``DataLoader(dataset, batch_sampler=sampler)``. Lightning calls ``set_epoch`` on
    ``loader.batch_sampler.sampler``, so :attr:`sampler` is the sampler itself and every epoch
    (also after resuming from a checkpoint at an epoch boundary) gets its own order. The order
    within an epoch is not checkpointed: resuming mid-epoch restarts that epoch's order.

    Args:
        neighbors: (N, k) integer tensor; row i holds the dataset indices of item i's k nearest
            neighbours, excluding i itself (e.g. from :func:`reference_neighbors`).
        batch_size: Indices per full batch, at least ``1 + neighbors_per_anchor`` and at most N.
        neighbors_per_anchor: Neighbours following each anchor, in ``[1, k]``.
        drop_last: Drop the last, shorter batch of an epoch (see above).
        seed: Non-negative base seed shared by all ranks.
        num_replicas: Number of distributed processes; None: the process group's world size
            when iterated (1 without one).
        rank: This process's rank in ``[0, num_replicas)``; None: the process group's rank when
            iterated (0 without one).

    Raises:
        ValueError: On a malformed neighbour table (not 2-D, not integer, values outside
            ``[0, N)``, an item listed as its own neighbour), a batch size below
            ``1 + neighbors_per_anchor`` or above N, ``neighbors_per_anchor`` above k, a bad
            seed/rank, or too few items for one batch per rank (for a world read from the
            process group: when iterated or measured).

    Examples:
        >>> neighbors = torch.tensor([[1, 2], [0, 2], [3, 0], [2, 4], [3, 1]])
        >>> sampler = NeighborBatchSampler(neighbors, batch_size=4, drop_last=False)
        >>> len(sampler)
        3
        >>> batches = list(sampler)
        >>> [len(b) for b in batches]
        [4, 4, 2]
        >>> all(b[1] in neighbors[b[0]] and b[3] in neighbors[b[2]] for b in batches[:2])
        True
        >>> sorted(b[i] for b in batches for i in sampler.batch_layout(len(b))[0].tolist())
        [0, 1, 2, 3, 4]
    """

    def __init__(
        self,
        neighbors: Tensor,
        batch_size: int,
        neighbors_per_anchor: int = 1,
        drop_last: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        super().__init__()
        table = _neighbor_table(neighbors)
        num_items, k = table.shape
        per_anchor = check_int("neighbors_per_anchor", neighbors_per_anchor, 1)
        if per_anchor > k:
            raise ValueError(
                f"neighbors_per_anchor must be at most k = {k} (neighbour table shape "
                f"{tuple(table.shape)}) to draw distinct neighbours, got {per_anchor}"
            )
        batch = check_int("batch_size", batch_size, 1)
        if batch < 1 + per_anchor:
            raise ValueError(
                f"batch_size must be at least 1 + neighbors_per_anchor = {1 + per_anchor} "
                f"(one anchor and its neighbours), got {batch}"
            )
        if num_items < batch:
            raise ValueError(
                f"the dataset has N = {num_items} items (neighbour table shape "
                f"{tuple(table.shape)}), fewer than one batch of batch_size = {batch}"
            )
        if not isinstance(drop_last, bool):
            raise ValueError(f"drop_last must be a bool, got {drop_last!r}")
        if num_replicas is not None:
            num_replicas = check_int("num_replicas", num_replicas, 1)
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, (int, np.integer))):
            raise ValueError(f"rank must be an integer, got {rank!r}")

        self._neighbors = table
        self.num_items = int(num_items)
        self.k = int(k)
        self.batch_size = batch
        self.neighbors_per_anchor = per_anchor
        self.drop_last = drop_last
        self.seed = check_int("seed", seed, 0)
        self._num_replicas = num_replicas
        self._rank = None if rank is None else int(rank)
        self.epoch = 0
        self.group_size = 1 + per_anchor
        self.groups_per_batch = batch // self.group_size
        self.anchors_per_batch = self.groups_per_batch + batch % self.group_size
        divide = math.ceil if not drop_last else math.floor
        self.batches_per_epoch = int(divide(self.num_items / self.anchors_per_batch))
        self._world()  # explicit (or already known) settings fail here, before any training

    @property
    def num_replicas(self) -> int:
        """Processes the batches are split across (read from the process group when None was
        passed)."""
        return self._world()[0]

    @property
    def rank(self) -> int:
        """This process's share of the batches (read from the process group when None was
        passed)."""
        return self._world()[1]

    def _world(self) -> tuple[int, int]:
        """``(num_replicas, rank)``, validated; unset ones from the default process group."""
        replicas = dist.world_size() if self._num_replicas is None else self._num_replicas
        rank = dist.rank() if self._rank is None else self._rank
        if not 0 <= rank < replicas:
            raise ValueError(f"rank must lie in [0, num_replicas = {replicas}), got {rank}")
        if self.batches_per_epoch < replicas:
            raise ValueError(
                f"N = {self.num_items} items make {self.batches_per_epoch} batches of "
                f"{self.anchors_per_batch} anchors (batch_size = {self.batch_size}), fewer than "
                f"one per rank for num_replicas = {replicas}"
            )
        return replicas, rank

    @property
    def sampler(self) -> NeighborBatchSampler:
        """The sampler itself: Lightning calls ``loader.batch_sampler.sampler.set_epoch``."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch whose order the next iteration yields (seeded by ``seed + epoch``).

        Examples:
            >>> neighbors = torch.tensor([[1], [0], [3], [2]])
            >>> sampler = NeighborBatchSampler(neighbors, batch_size=2)
            >>> sampler.set_epoch(1)
            >>> list(sampler) == list(NeighborBatchSampler(neighbors, batch_size=2, seed=1))
            True
        """
        self.epoch = check_int("epoch", epoch, 0)

    def __len__(self) -> int:
        """Number of batches this rank yields per epoch."""
        return self.batches_per_epoch // self._world()[0]

    def set_neighbors(self, neighbors: Tensor) -> None:
        """Mines later batches from a new neighbour table of the same N items (and k >= the
        neighbours per anchor), e.g. the one an output-set refresh rebuilt.

        Raises:
            ValueError: For a table of another item count or too few neighbours per row.
        """
        table = _neighbor_table(neighbors)
        if table.shape[0] != self.num_items or table.shape[1] < self.neighbors_per_anchor:
            raise ValueError(
                f"the new neighbour table must have shape ({self.num_items}, >= "
                f"{self.neighbors_per_anchor}), got {tuple(table.shape)}"
            )
        self._neighbors = table
        self.k = int(table.shape[1])

    def __iter__(self) -> Iterator[list[int]]:
        replicas, rank = self._world()
        rounds = self.batches_per_epoch // replicas
        permutation = np.random.default_rng(self.seed + self.epoch).permutation(self.num_items)
        for index in range(rank, rounds * replicas, replicas):
            yield self._batch(permutation, index)

    def _batch(self, permutation: np.ndarray, index: int) -> list[int]:
        """Batch ``index`` of the epoch whose anchor order is ``permutation``."""
        start = index * self.anchors_per_batch
        anchors = permutation[start : start + self.anchors_per_batch]
        paired, fill = anchors[: self.groups_per_batch], anchors[self.groups_per_batch :]
        # Each batch draws from its own stream, derived from (seed + epoch, batch index), so a
        # rank computes only its own batches and all ranks still agree on every batch.
        rng = np.random.default_rng(
            np.random.SeedSequence(self.seed + self.epoch, spawn_key=(index,))
        )
        # Each row in an independent uniformly random order: its first m entries are the draw,
        # the rest the replacements in order of preference.
        candidates = rng.permuted(self._neighbors[paired], axis=1)
        chosen = candidates[:, : self.neighbors_per_anchor]
        groups = np.concatenate([paired[:, None], chosen], axis=1).reshape(-1)
        batch = np.concatenate([groups, fill])
        if np.unique(batch).size != batch.size:
            chosen = self._replace_duplicates(anchors, candidates)
            groups = np.concatenate([paired[:, None], chosen], axis=1).reshape(-1)
            batch = np.concatenate([groups, fill])
        return [int(i) for i in batch]

    def _replace_duplicates(self, anchors: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Neighbours per paired anchor, skipping candidates already in the batch where possible.

        Anchors are handled in batch order; without any collision this returns exactly the
        first ``neighbors_per_anchor`` candidates of every row.
        """
        per_anchor = self.neighbors_per_anchor
        used = set(anchors.tolist())
        chosen = np.empty((candidates.shape[0], per_anchor), dtype=np.int64)
        for row, row_candidates in enumerate(candidates.tolist()):
            picked: list[int] = []
            taken = [False] * len(row_candidates)
            for position, candidate in enumerate(row_candidates):
                if candidate not in used and candidate not in picked:
                    picked.append(candidate)
                    taken[position] = True
                    if len(picked) == per_anchor:
                        break
            # Unavoidable: the row has too few entries outside the batch, so keep the earliest
            # remaining draws although they repeat an index.
            for position, candidate in enumerate(row_candidates):
                if len(picked) == per_anchor:
                    break
                if not taken[position]:
                    picked.append(candidate)
                    taken[position] = True
            used.update(picked)
            chosen[row] = picked
        return chosen

    def batch_layout(self, batch_len: int) -> tuple[Tensor, Tensor]:
        """Positions of the anchors and of their neighbours in a batch of ``batch_len`` indices.

        Args:
            batch_len: Length of a batch this sampler yielded (``batch_size``, or less for the
                last batch of an epoch with ``drop_last=False``).

        Returns:
            ``(anchor_positions, neighbor_positions)``: int64 tensors of shape (A,) and
            (G, neighbors_per_anchor); row j of ``neighbor_positions`` holds the neighbours of
            the anchor at ``anchor_positions[j]``. The first G anchors have neighbours, the
            remaining ``A - G`` fill the batch without any.

        Raises:
            ValueError: If no batch of this sampler has length ``batch_len``.

        Examples:
            >>> sampler = NeighborBatchSampler(torch.tensor([[1], [0], [3], [2]]), batch_size=3)
            >>> sampler.batch_layout(3)
            (tensor([0, 2]), tensor([[1]]))
        """
        length = check_int("batch_len", batch_len, 1)
        groups = min(length // self.group_size, self.groups_per_batch)
        fill = length - groups * self.group_size
        if length > self.batch_size or (groups < self.groups_per_batch and fill > 0):
            raise ValueError(
                f"no batch of this sampler has length {length} (batch_size = {self.batch_size}, "
                f"{self.group_size} indices per anchor group)"
            )
        starts = torch.arange(groups, dtype=torch.int64) * self.group_size
        anchor_positions = torch.cat(
            [starts, torch.arange(groups * self.group_size, length, dtype=torch.int64)]
        )
        offsets = torch.arange(1, self.group_size, dtype=torch.int64)
        return anchor_positions, starts[:, None] + offsets[None, :]


def reference_neighbors(embeddings: Tensor, k: int, backend: str = "auto") -> Tensor:
    """The (N, k) table of each item's k nearest neighbours by exact cosine similarity.

    The embeddings are L2-normalised and searched leave-one-out with
    :func:`lightly_grpo.index.search.knn_search`, so row i never contains i and lists the most
    similar item first (ties go to the lower index).

    Args:
        embeddings: (N, D) float embeddings, e.g. of the frozen pretrained backbone.
        k: Neighbours per item, in ``[1, N - 1]``.
        backend: Search backend (``"auto"``, ``"faiss"``, ``"faiss-gpu"``, ``"tiled"``,
            ``"torch"``).

    Returns:
        (N, k) int64 tensor of dataset indices on the CPU, ready for
        :class:`NeighborBatchSampler`.

    Raises:
        ValueError: If the embeddings are not a 2-D tensor, hold NaN/inf or an all-zero row
            (no cosine similarity), or k is not in ``[1, N - 1]``.

    Examples:
        >>> embeddings = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> reference_neighbors(embeddings, k=1)
        tensor([[1],
                [0],
                [3],
                [2]])
    """
    check_embeddings(embeddings)
    num_items = embeddings.shape[0]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < num_items:
        raise ValueError(
            f"k must be an integer in [1, N - 1] = [1, {num_items - 1}] (N = {num_items} "
            f"embeddings, each item excluded from its own neighbours), got {k!r}"
        )
    x = embeddings.detach().float()
    norms = torch.linalg.vector_norm(x, dim=1)
    zero = torch.nonzero(norms == 0).flatten()
    if zero.numel() > 0:
        raise ValueError(
            f"embeddings have {zero.numel()} all-zero rows (cosine similarity undefined), "
            f"first row {int(zero[0])}"
        )
    x = F.normalize(x, dim=1)
    _, indices = knn_search(x, x, int(k), exclude_self=True, backend=backend)
    return indices.to(device="cpu", dtype=torch.int64).contiguous()
