"""Retrieval and kNN metrics over embeddings, exact and memory-bounded at any size.

- :class:`RetrievalEvaluator` / :class:`RetrievalResult` (:mod:`.evaluator`): P@1, R-precision,
  MAP@R and MAP with the definitions of pytorch-metric-learning's
  ``AccuracyCalculator(k="max_bin_count")`` (Musgrave et al., 2020): R is the number of
  reference items with the query's label (minus the query itself in leave-one-out); the ranking
  is cut at ``max_bin_count``, the largest R among the query labels; queries whose label has no
  other reference item ("lone" queries) are left out of these metrics, as ``AccuracyCalculator``
  does. Recall@K is the share of (non-lone) queries with a same-label item among their top K
  (so Recall@1 equals P@1). kNN top-1/top-5 is the cosine-weighted vote of lightly's
  ``knn_predict`` (weights ``exp(sim / T)``, same operations, so ties resolve the same way),
  averaged over all queries. NMI/AMI compare the labels with a spherical k-means of the queries.
- :func:`evaluate_against_bank` (:mod:`.bank`): kNN of a test split against a train bank plus
  leave-one-out retrieval within the test split, as one result.
- :mod:`.metrics`: every metric as a registered :class:`MetricSpec` (:func:`metric_spec`) and the
  kNN protocol table :data:`KNN_PROTOCOLS`.
- :mod:`.knn`: the kNN vote; :mod:`.pml`: a ``knn_func`` for ``AccuracyCalculator``.

Examples:
    >>> import torch
    >>> x, y = torch.randn(200, 16), torch.arange(200) % 4
    >>> result = RetrievalEvaluator(knn_protocols=("dino",), nmi=False).evaluate(x, y)
    >>> metric_spec("knn_top1_dino").display_name in [
    ...     metric_spec(name).display_name for name in result.metrics
    ... ]
    True
"""

from __future__ import annotations

from lightly_grpo.evaluation.bank import evaluate_against_bank
from lightly_grpo.evaluation.clustering import (
    clustering_accuracy,
    clustering_scores,
    kmeans_clustering_scores,
    neighbor_purity,
)
from lightly_grpo.evaluation.evaluator import RetrievalEvaluator, RetrievalResult
from lightly_grpo.evaluation.knn import knn_vote, parse_protocol
from lightly_grpo.evaluation.metrics import (
    KNN_PROTOCOLS,
    KNN_TOP,
    RETRIEVAL_METRICS,
    MetricSpec,
    metric_spec,
    register_metric,
    registered_metrics,
)
from lightly_grpo.evaluation.pml import IndexKNN, make_knn_func

__all__ = [
    "clustering_accuracy",
    "clustering_scores",
    "kmeans_clustering_scores",
    "neighbor_purity",
    "KNN_PROTOCOLS",
    "KNN_TOP",
    "RETRIEVAL_METRICS",
    "IndexKNN",
    "MetricSpec",
    "RetrievalEvaluator",
    "RetrievalResult",
    "evaluate_against_bank",
    "knn_vote",
    "make_knn_func",
    "metric_spec",
    "parse_protocol",
    "register_metric",
    "registered_metrics",
]
