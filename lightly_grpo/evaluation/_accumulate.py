"""Per-query values of the chunked metrics, filled search chunk by search chunk.

:class:`PerQueryValues` holds one float64 value per query for every retrieval and kNN metric of
:class:`~lightly_grpo.evaluation.RetrievalEvaluator`; the search hands it one chunk at a time, so
memory grows with the number of queries only. At the end it averages them overall and per class.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightly_grpo.evaluation.knn import knn_votes
from lightly_grpo.evaluation.metrics import KNNChunk, MetricSpec, RetrievalChunk


class PerQueryValues:
    """One float64 value per query for each retrieval and kNN metric.

    Args:
        specs: The evaluator's metric specs; ``"clusters"`` ones are skipped (they are not per
            query).
        num_queries: Number of queries.

    Examples:
        >>> from lightly_grpo.evaluation.metrics import metric_spec
        >>> specs = [metric_spec("knn_top1_dino")]
        >>> values = PerQueryValues(specs, num_queries=4)
        >>> values.add_knn(0, specs, torch.ones(4, 2), torch.tensor([[0, 1]] * 4),
        ...                torch.tensor([0, 0, 1, 1]), num_classes=2, temperature=0.1)
        >>> values.means(not_lone=torch.ones(4, dtype=torch.bool))
        {'knn_top1_dino': 0.5}
    """

    def __init__(self, specs: Sequence[MetricSpec], num_queries: int) -> None:
        self.specs = [s for s in specs if s.needs != "clusters"]
        self.retrieval_specs = [s for s in self.specs if s.needs == "retrieval"]
        self.values = {s.name: torch.zeros(num_queries, dtype=torch.float64) for s in self.specs}

    def add_retrieval(self, start: int, chunk: RetrievalChunk) -> None:
        """Stores every retrieval metric of the queries ``start .. start + len(chunk)``."""
        stop = start + len(chunk.relevant)
        for spec in self.retrieval_specs:
            assert spec.fn is not None  # every retrieval metric has its function
            self.values[spec.name][start:stop] = spec.fn(chunk).cpu()

    def add_knn(
        self,
        start: int,
        specs: Sequence[MetricSpec],
        similarities: Tensor,
        neighbor_ids: Tensor,
        targets: Tensor,
        num_classes: int,
        temperature: float,
    ) -> None:
        """Stores the kNN ``specs`` of one protocol for the queries from ``start`` on.

        Args:
            start: Index of the chunk's first query.
            specs: The protocol's ``knn_top{N}`` specs.
            similarities: (B, k) similarities of each query's k nearest references.
            neighbor_ids: (B, k) int64 class indices of those references.
            targets: (B,) int64 class indices of the queries.
            num_classes: Number of class indices.
            temperature: The protocol's vote temperature.
        """
        # The vote runs in sub-batches (bounded one-hot memory); each is scored on its own rows.
        for rows, predictions in knn_votes(similarities, neighbor_ids, num_classes, temperature):
            votes = KNNChunk(predictions, targets[rows])
            first = start + (rows.start or 0)
            for spec in specs:
                assert spec.fn is not None  # every kNN metric has its function
                values = spec.fn(votes).cpu()
                self.values[spec.name][first : first + len(values)] = values

    def means(self, not_lone: Tensor) -> dict[str, float]:
        """Each metric's mean, in spec order.

        Args:
            not_lone: (Q,) bool CPU mask of the queries with another same-label reference.
        """
        metrics: dict[str, float] = {}
        for spec in self.specs:
            values = self.values[spec.name]
            # kNN accuracy averages over all queries (as lightly does); retrieval metrics leave
            # out lone queries (as AccuracyCalculator does).
            subset = values if spec.needs == "knn" else values[not_lone]
            metrics[spec.name] = float(subset.mean())
        return metrics

    def per_class(
        self,
        keys: Sequence[str],
        class_ids: Tensor,
        not_lone: Tensor,
        class_names: Sequence[int],
    ) -> dict[str, dict[int, float]]:
        """Each metric of ``keys`` averaged per query class (classes without queries left out).

        Args:
            keys: Metric names; ``knn_*`` ones average over all queries, the others over
                non-lone queries (as :meth:`means` does).
            class_ids: (Q,) int64 CPU class index of each query.
            not_lone: (Q,) bool CPU mask of the non-lone queries.
            class_names: The label of each class index.
        """
        num_classes = len(class_names)
        per_class: dict[str, dict[int, float]] = {}
        for key in keys:
            mask = (
                torch.ones(len(class_ids), dtype=torch.bool) if key.startswith("knn_") else not_lone
            )
            ids = class_ids[mask]
            sums = torch.bincount(ids, weights=self.values[key][mask], minlength=num_classes)
            counts = torch.bincount(ids, minlength=num_classes)
            per_class[key] = {
                class_names[c]: float(sums[c] / counts[c])
                for c in range(num_classes)
                if counts[c] > 0
            }
        return per_class
