"""kNN-neighbour output sets: GRPO-RM without labels (and, with labels, for retrieval).

A training batch holds two augmented views of B images, concatenated: rows ``[0, B)`` are the
first views, rows ``[B, 2B)`` the second. Every row is a query; its group is the other ``2B - 1``
rows of the batch (as in NT-Xent). The *correct* output is the other view of the same image (the
instance); candidates among the query image's ``k`` nearest neighbours in a bank of training-set
embeddings are *neighbours*: rewarded less than the instance (``MaskReward("neighbor")``) and
spared the uniformity penalty. The neighbour table comes from the frozen pretrained model
(:meth:`NeighborOutputSet.initialize`) and can be rebuilt from the current one
(:meth:`~NeighborOutputSet.refresh`, called by
:class:`~lightly_grpo.output_sets.refresh.OutputSetRefresh`).

With ``use_labels=True`` (the retrieval mode: train on some classes, retrieve others) every
candidate of the query's class is correct as well.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightly_grpo.data.neighbor_sampler import reference_neighbors
from lightly_grpo.index.search import BACKENDS
from lightly_grpo.output_sets.base import (
    OutputGroup,
    OutputSet,
    check_similarities,
    register_output_set,
    unit_rows,
)
from lightly_grpo.validation import as_labels, check_embedding_shape, check_embeddings, check_int

__all__ = ["NeighborOutputSet", "in_batch_candidates"]


def in_batch_candidates(num_rows: int, device: torch.device | None = None) -> Tensor:
    """Column indices (R, R - 1) of every row's candidates: all other rows, in order.

    Examples:
        >>> in_batch_candidates(3).tolist()
        [[1, 2], [0, 2], [0, 1]]
    """
    if isinstance(num_rows, bool) or not isinstance(num_rows, int) or num_rows < 2:
        raise ValueError(f"an in-batch group needs at least 2 rows, got {num_rows!r}")
    rows = torch.arange(num_rows, device=device).unsqueeze(1)
    cols = torch.arange(num_rows - 1, device=device).unsqueeze(0)
    return cols + (cols >= rows).long()


#: Reference-space neighbours per item (SCAN mines 20).
DEFAULT_NUM_NEIGHBORS = 20
#: Lambda of the uniformity reward for in-batch groups: among 2B - 1 candidates pi_old is small,
#: so the penalty that makes hard negatives count must be larger than for a class set
#: (recipes/benchmarks/RESULTS.md, "Unlabeled").
IN_BATCH_UNIFORMITY_WEIGHT = 10.0


@register_output_set("neighbors")
class NeighborOutputSet(OutputSet):
    """In-batch groups with an instance target and reference-space neighbours.

    Args:
        num_items: Size N of the training set (the bank); items are its dataset indices.
        embedding_size: Dimension D of the embeddings.
        num_neighbors: k, the neighbours per item in the table.
        use_labels: Retrieval mode: candidates of the query's class are correct too (batches
            must carry labels), and the labels overrule the table: a neighbour of another class
            is a plain wrong output.
        backend: Search backend of the neighbour table (see :mod:`lightly_grpo.index`).
        neighbors_positive: Whether table neighbours are positives (spared the uniformity
            penalty and the advantage cap). False makes them ordinary wrong outputs, e.g. for an
            ablation without the neighbour reward; the ``"neighbor"`` mask stays in ``extras``.

    Examples:
        >>> neighbors = NeighborOutputSet(num_items=6, embedding_size=2, num_neighbors=1)
        >>> bank = torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0], [-1, 0.1]])
        >>> neighbors.initialize(bank)
        >>> views = torch.cat([bank[[0, 2]], bank[[0, 2]] + 0.01])  # 2 views of items 0 and 2
        >>> group = neighbors.group(views, items=torch.tensor([0, 2]))
        >>> group.similarities.shape, group.correct[0].tolist()
        (torch.Size([4, 3]), [False, True, False])
    """

    requires_items = True
    refreshable = True

    def __init__(
        self,
        num_items: int,
        embedding_size: int,
        num_neighbors: int = DEFAULT_NUM_NEIGHBORS,
        use_labels: bool = False,
        backend: str = "auto",
        neighbors_positive: bool = True,
    ) -> None:
        super().__init__()
        num_items = check_int("num_items", num_items, 2)
        embedding_size = check_int("embedding_size", embedding_size, 1)
        num_neighbors = check_int("num_neighbors", num_neighbors, 1)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if not 1 <= num_neighbors < num_items:
            raise ValueError(
                f"num_neighbors must be in [1, {num_items - 1}] for {num_items} items, "
                f"got {num_neighbors}"
            )
        self.num_items = num_items
        self.embedding_size = embedding_size
        self.num_neighbors = num_neighbors
        self.use_labels = use_labels
        self.backend = backend
        self.neighbors_positive = neighbors_positive
        # Saved in checkpoints with the model: a resumed run keeps its neighbour table.
        self.neighbors: Tensor
        self.register_buffer("neighbors", torch.full((num_items, num_neighbors), -1))
        # Host-side cache of `initialized`: scanning the table costs O(N) per batch (14 ms at
        # N = 1M, k = 20 on the CPU; a device synchronisation on a GPU). Set once a scan passes
        # or a refresh wrote the table; cleared when a state dict is loaded.
        self._is_initialized = False
        self.register_load_state_dict_post_hook(NeighborOutputSet._forget_initialized)

    @staticmethod
    def _forget_initialized(module: torch.nn.Module, incompatible_keys: Any) -> None:
        assert isinstance(module, NeighborOutputSet)
        module._is_initialized = False

    @property
    def requires_labels(self) -> bool:  # type: ignore[override]
        return self.use_labels

    @property
    def num_outputs(self) -> int:
        return self.num_items

    @property
    def initialized(self) -> bool:
        if not self._is_initialized:  # scanned until it passes (a table may be copied in)
            self._is_initialized = bool((self.neighbors[:, 0] >= 0).all())
        return self._is_initialized

    def params(self) -> dict[str, Any]:
        return {
            "num_items": self.num_items,
            "embedding_size": self.embedding_size,
            "num_neighbors": self.num_neighbors,
            "use_labels": self.use_labels,
            "backend": self.backend,
            "neighbors_positive": self.neighbors_positive,
        }

    # ------------------------------------------------------------------ the table
    @torch.no_grad()
    def refresh(self, bank: Tensor, labels: Tensor | None = None) -> None:
        """Rebuilds the neighbour table from embeddings (N, D) of the whole training set."""
        if bank.ndim != 2 or bank.shape[0] != self.num_items:
            raise ValueError(
                f"the bank must hold one embedding per training item, shape ({self.num_items}, "
                f"{self.embedding_size}), got {tuple(bank.shape)}"
            )
        check_embeddings(bank, self.embedding_size)
        # Unit rows first: float64 embeddings beyond float32's range keep their directions.
        table = reference_neighbors(
            unit_rows(bank.detach()).float(), self.num_neighbors, self.backend
        )
        self.neighbors.copy_(table.to(self.neighbors.device))
        self._is_initialized = True

    # ------------------------------------------------------------------ groups
    def group(
        self, embeddings: Tensor, labels: Tensor | None = None, items: Tensor | None = None
    ) -> OutputGroup:
        rows, item_of_row = self._rows(embeddings, items)
        z = unit_rows(embeddings)
        columns = in_batch_candidates(rows, z.device)
        similarities = (z @ z.t()).gather(1, columns)
        check_similarities(similarities, {"embeddings": embeddings})
        return self._group_of(similarities, columns, item_of_row, labels)

    def reference_similarities(self, embeddings: Tensor, group: OutputGroup) -> Tensor:
        # The reference policy scores the same in-batch candidates with its own embeddings.
        check_embedding_shape(embeddings, self.embedding_size, name="reference embeddings")
        if embeddings.shape[0] != group.similarities.shape[0]:
            raise ValueError(
                f"reference embeddings must have one row per query ({group.similarities.shape[0]})"
                f", got shape {tuple(embeddings.shape)}"
            )
        z = unit_rows(embeddings)
        sims = (z @ z.t()).gather(1, in_batch_candidates(len(z), z.device))
        check_similarities(sims, {"reference embeddings": embeddings})
        return sims

    @torch.no_grad()
    def _group_of(
        self, similarities: Tensor, columns: Tensor, item_of_row: Tensor, labels: Tensor | None
    ) -> OutputGroup:
        candidate_items = item_of_row[columns]  # (R, R - 1) dataset indices
        correct = candidate_items == item_of_row.unsqueeze(1)
        table = self.neighbors.to(item_of_row.device)[item_of_row]  # (R, k)
        neighbor = (candidate_items.unsqueeze(2) == table.unsqueeze(1)).any(dim=2) & ~correct
        if self.use_labels:
            if labels is None:
                raise ValueError("NeighborOutputSet(use_labels=True) needs batches with labels")
            labels = as_labels(labels, item_of_row.device).reshape(-1)
            if len(labels) != len(item_of_row):
                raise ValueError(
                    f"labels must have one entry per row ({len(item_of_row)}), got {len(labels)}"
                )
            # Same-class candidates are correct; a neighbour of another class is wrong.
            correct = correct | (labels[columns] == labels.unsqueeze(1))
            neighbor = torch.zeros_like(neighbor)
        return OutputGroup(
            similarities=similarities,
            correct=correct,
            indices=candidate_items,
            extras={"neighbor": neighbor},
            positive=neighbor if self.neighbors_positive else None,
        )

    def _rows(self, embeddings: Tensor, items: Tensor | None) -> tuple[int, Tensor]:
        """The row count and the dataset index of every row (views repeat their image's)."""
        if (
            not isinstance(embeddings, Tensor)
            or embeddings.ndim != 2
            or embeddings.shape[1] != self.embedding_size
        ):
            shape = tuple(embeddings.shape) if isinstance(embeddings, Tensor) else embeddings
            raise ValueError(
                f"embeddings must have shape (rows, {self.embedding_size}), got {shape!r}"
            )
        if not embeddings.is_floating_point():
            raise ValueError(f"embeddings must be floating point, got dtype {embeddings.dtype}")
        if not self.initialized:
            raise ValueError(
                "NeighborOutputSet has no neighbour table yet: call initialize(bank) with the "
                "embeddings of the whole training set first"
            )
        if items is None:
            raise ValueError(
                "NeighborOutputSet needs the dataset index of every image: batches must be "
                "(views, labels, indices), e.g. from lightly_grpo.data.IndexedDataset"
            )
        try:
            items = torch.as_tensor(items, device=embeddings.device).reshape(-1)
        except (TypeError, ValueError, RuntimeError) as error:
            raise ValueError(
                f"items must be integer dataset indices, got {type(items).__name__}: {error}"
            ) from None
        if len(items) == 0:
            raise ValueError("items is empty: expected one dataset index per image of the batch")
        if items.dtype.is_floating_point or items.dtype == torch.bool:
            raise ValueError(f"items must be integer dataset indices, got dtype {items.dtype}")
        rows = embeddings.shape[0]
        if rows % len(items) != 0 or rows // len(items) < 1:
            raise ValueError(
                f"{rows} embedding rows do not match {len(items)} items (expected the views of "
                "every image concatenated: rows = views x items)"
            )
        items = items.long().repeat(rows // len(items))
        if rows < 2:
            raise ValueError(f"an in-batch group needs at least 2 rows, got {rows}")
        low, high = int(items.min()), int(items.max())
        if low < 0 or high >= self.num_items:
            bad = low if low < 0 else high
            raise ValueError(f"item index {bad} is out of range for {self.num_items} items")
        return rows, items
