"""The metrics :class:`~lightly_grpo.evaluation.RetrievalEvaluator` computes, as small registered
functions.

Every metric key the evaluator emits has a :class:`MetricSpec` (look it up with
:func:`metric_spec`): its display name, whether higher is better, what it ``needs`` and the
function that computes it:

- ``"retrieval"``: per-query values from one chunk of a ranked search (:class:`RetrievalChunk`),
  averaged over the queries that have another reference item with their label. P@1,
  R-precision, MAP@R and MAP follow pytorch-metric-learning's
  ``AccuracyCalculator(k="max_bin_count")``; ``recall_at_{K}`` is the metric-learning Recall@K
  (a same-label item among the top K).
- ``"knn"``: per-query values from a kNN vote (:class:`KNNChunk`), averaged over all queries as
  lightly does; ``knn_top{N}_{protocol}`` is top-N accuracy of the vote of a protocol from
  :data:`KNN_PROTOCOLS` or a ``(k, T)`` tuple (named ``k{k}_t{T}``).
- ``"clusters"``: one value from the labels and a clustering of the queries
  (:class:`ClusterInputs`): NMI, AMI, clustering accuracy (Hungarian matching) and ARI, all of
  the evaluator's one k-means.
- ``"run"``: computed by the run beside the evaluator, registered for their name and direction:
  the model's own classifier and the nearest class mean (``classifier_accuracy``,
  ``ncm_accuracy``), the neighbour purity of the test set, and the k-means output set's own
  clustering (``policy_cluster_acc``, ``policy_nmi``, ``policy_ari``).

Parametrised families (``recall_at_{K}``, ``knn_top{N}_{protocol}``) are resolved by pattern, so
any K, N or protocol has a spec. :func:`register_metric` adds a metric.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np
import torch
from sklearn.metrics import (
    adjusted_mutual_info_score,
    adjusted_rand_score,
    normalized_mutual_info_score,
)
from torch import Tensor

from lightly_grpo.evaluation.clustering import clustering_accuracy

#: The kNN protocol table: name -> (k, temperature). Used for evaluation and display names.
KNN_PROTOCOLS: dict[str, tuple[int, float]] = {"dino": (20, 0.07), "lightly": (200, 0.1)}

#: The AccuracyCalculator metrics, in the order the evaluator reports them.
RETRIEVAL_METRICS = (
    "precision_at_1",
    "r_precision",
    "mean_average_precision_at_r",
    "mean_average_precision",
)

#: Top-N accuracies the evaluator reports per kNN protocol.
KNN_TOP = (1, 5)

Needs = Literal["retrieval", "knn", "clusters", "run"]
_NEEDS = ("retrieval", "knn", "clusters", "run")


@dataclass
class RetrievalChunk:
    """The ranked search results of one chunk of queries, as retrieval metrics see them.

    Attributes:
        same: (B, search_k) bool, whether result j has the query's label (best first).
        relevant: (B,) int64 R, the number of reference items with the query's label (minus the
            query itself in leave-one-out); lone queries (R = 0) are dropped when averaging.
        max_bin: The ranking cut of MAP and MAP@R (``AccuracyCalculator``'s
            ``k="max_bin_count"``): the largest R.
        ranks: (max_bin,) float64 ranks 1..max_bin.
    """

    same: Tensor
    relevant: Tensor
    max_bin: int
    ranks: Tensor

    @cached_property
    def r(self) -> Tensor:
        """R as float64; lone queries get 1 (they are dropped later) to avoid 0/0."""
        return self.relevant.clamp_min(1).double()

    @cached_property
    def top(self) -> Tensor:
        """``same`` cut at max_bin: what MAP counts."""
        return self.same[:, : self.max_bin]

    @cached_property
    def hits_r(self) -> Tensor:
        """Hits among each query's first R results: what R-precision and MAP@R count."""
        positions = torch.arange(1, self.max_bin + 1, device=self.same.device)
        return self.top & (positions[None, :] <= self.relevant[:, None])


@dataclass
class KNNChunk:
    """The kNN vote of one chunk of queries.

    Attributes:
        predictions: (B, C) class indices by summed vote weight, best first.
        targets: (B,) the queries' class indices.
    """

    predictions: Tensor
    targets: Tensor


@dataclass
class ClusterInputs:
    """Query labels and cluster assignments, as NumPy arrays (what scikit-learn takes)."""

    labels: np.ndarray
    assignments: np.ndarray


@dataclass(frozen=True)
class MetricSpec:
    """A metric: its key, how to show it, which way is better, what it needs, how to compute it.

    Attributes:
        name: Key in :attr:`RetrievalResult.metrics`.
        display_name: Human-readable name, e.g. ``"MAP@R"``.
        higher_is_better: Whether a larger value is better.
        needs: ``"retrieval"`` (``fn(RetrievalChunk) -> (B,) float64``), ``"knn"``
            (``fn(KNNChunk) -> (B,) float64``), ``"clusters"`` (``fn(ClusterInputs) -> float``)
            or ``"run"`` (computed by the run; ``fn`` is None).
        fn: The function (None for ``"run"`` metrics).

    Examples:
        >>> spec = metric_spec("mean_average_precision_at_r")
        >>> spec.display_name, spec.needs, spec.higher_is_better
        ('MAP@R', 'retrieval', True)
    """

    name: str
    display_name: str
    higher_is_better: bool
    needs: Needs
    fn: Callable[[Any], Any] | None


def precision_at_1(chunk: RetrievalChunk) -> Tensor:
    """Whether the first result has the query's label."""
    return chunk.same[:, 0].double()


def r_precision(chunk: RetrievalChunk) -> Tensor:
    """Share of same-label items among the first R results."""
    return chunk.hits_r.sum(dim=1).double() / chunk.r


def mean_average_precision_at_r(chunk: RetrievalChunk) -> Tensor:
    """Average precision over the first R results, divided by R (Musgrave et al., 2020)."""
    hits = chunk.hits_r
    precision = hits.cumsum(dim=1).double().div_(chunk.ranks).mul_(hits)
    return precision.sum(dim=1) / chunk.r


def mean_average_precision(chunk: RetrievalChunk) -> Tensor:
    """Average precision over the first max_bin results, divided by R."""
    hits = chunk.top
    precision = hits.cumsum(dim=1).double().div_(chunk.ranks).mul_(hits)
    return precision.sum(dim=1) / chunk.r


def recall_at(chunk: RetrievalChunk, k: int) -> Tensor:
    """Whether a same-label item is among the first k results (metric-learning Recall@K)."""
    return chunk.same[:, :k].any(dim=1).double()


def knn_top(chunk: KNNChunk, n: int) -> Tensor:
    """Whether the query's class is among the n best-voted classes."""
    return (chunk.predictions[:, :n] == chunk.targets[:, None]).any(dim=1).double()


def nmi(inputs: ClusterInputs) -> float:
    """Normalised mutual information between labels and clusters."""
    return float(normalized_mutual_info_score(inputs.labels, inputs.assignments))


def ami(inputs: ClusterInputs) -> float:
    """Adjusted mutual information between labels and clusters."""
    return float(adjusted_mutual_info_score(inputs.labels, inputs.assignments))


def cluster_acc(inputs: ClusterInputs) -> float:
    """Clustering accuracy with Hungarian matching
    (:func:`~lightly_grpo.evaluation.clustering.clustering_accuracy`)."""
    return clustering_accuracy(inputs.assignments, inputs.labels)


def ari(inputs: ClusterInputs) -> float:
    """Adjusted Rand index between labels and clusters."""
    return float(adjusted_rand_score(inputs.labels, inputs.assignments))


_REGISTRY: dict[str, MetricSpec] = {}


def register_metric(spec: MetricSpec, *, overwrite: bool = False) -> MetricSpec:
    """Adds a fixed-name metric to the registry.

    Raises:
        ValueError: If the name is taken (and ``overwrite`` is False) or ``needs`` is unknown.
    """
    if spec.needs not in _NEEDS:
        raise ValueError(f"needs must be one of {_NEEDS}, got {spec.needs!r} ({spec.name})")
    if spec.name in _REGISTRY and not overwrite:
        raise ValueError(f"metric {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


for _name, _display, _fn in (
    ("precision_at_1", "P@1", precision_at_1),
    ("r_precision", "R-precision", r_precision),
    ("mean_average_precision_at_r", "MAP@R", mean_average_precision_at_r),
    ("mean_average_precision", "MAP", mean_average_precision),
):
    register_metric(MetricSpec(_name, _display, True, "retrieval", _fn))
register_metric(MetricSpec("nmi", "NMI", True, "clusters", nmi))
register_metric(MetricSpec("ami", "AMI", True, "clusters", ami))
register_metric(
    MetricSpec("cluster_acc", "Clustering ACC (k-means)", True, "clusters", cluster_acc)
)
register_metric(MetricSpec("ari", "ARI", True, "clusters", ari))
for _name, _display in (
    ("classifier_accuracy", "Classifier accuracy (the model's own head)"),
    ("ncm_accuracy", "Nearest-class-mean accuracy"),
    ("neighbor_purity", "Neighbour purity (k=20)"),
    ("policy_cluster_acc", "Clustering ACC (the policy's argmax)"),
    ("policy_nmi", "NMI (the policy's argmax)"),
    ("policy_ari", "ARI (the policy's argmax)"),
):
    register_metric(MetricSpec(_name, _display, True, "run", None))

_RECALL = re.compile(r"recall_at_([1-9]\d*)")
_KNN = re.compile(r"knn_top([1-9]\d*)_(.+)")
_CUSTOM_PROTOCOL = re.compile(r"k([1-9]\d*)_t(.+)")


def protocol_description(name: str) -> str:
    """``"k=20, T=0.07"`` for a protocol name (a :data:`KNN_PROTOCOLS` key or ``k{k}_t{T}``).

    Examples:
        >>> protocol_description("dino"), protocol_description("k7_t0.5")
        ('k=20, T=0.07', 'k=7, T=0.5')
    """
    if name in KNN_PROTOCOLS:
        k, t = KNN_PROTOCOLS[name]
        return f"k={k}, T={t:g}"
    custom = _CUSTOM_PROTOCOL.fullmatch(name)
    return f"k={custom.group(1)}, T={custom.group(2)}" if custom else name


def metric_spec(name: str) -> MetricSpec | None:
    """The spec of a metric key the evaluator emits, or None for an unknown key.

    Examples:
        >>> metric_spec("recall_at_4").display_name
        'Recall@4'
        >>> metric_spec("knn_top5_lightly").display_name
        'kNN top-5 (k=200, T=0.1)'
        >>> metric_spec("no_such_metric") is None
        True
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    recall = _RECALL.fullmatch(name)
    if recall:
        k = int(recall.group(1))
        return MetricSpec(name, f"Recall@{k}", True, "retrieval", lambda chunk: recall_at(chunk, k))
    knn = _KNN.fullmatch(name)
    if knn:
        n, protocol = int(knn.group(1)), knn.group(2)
        display = f"kNN top-{n} ({protocol_description(protocol)})"
        return MetricSpec(name, display, True, "knn", lambda chunk: knn_top(chunk, n))
    return None


def registered_metrics() -> list[str]:
    """Names of the fixed-name metrics (the parametrised families are resolved on demand).

    Examples:
        >>> "nmi" in registered_metrics()
        True
    """
    return list(_REGISTRY)
