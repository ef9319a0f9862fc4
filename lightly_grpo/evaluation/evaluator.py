"""Retrieval, kNN and clustering metrics over embeddings, exact and memory-bounded at any size.

:class:`RetrievalEvaluator` runs one exact chunked search through :mod:`lightly_grpo.index` and
hands each chunk of results to the requested metrics of :mod:`lightly_grpo.evaluation.metrics`
(P@1, R-precision, MAP@R, MAP and Recall@K with pytorch-metric-learning's definitions; kNN
top-1/top-5 with the operations of lightly's ``knn_predict``; NMI/AMI of a spherical k-means of
the queries).

Embeddings are L2-normalised inside (cosine similarity). Without a reference set the evaluation
is leave-one-out within the queries: each query is removed from its own results.

Memory: the search and every metric are computed chunk by chunk; only per-query values and the
top neighbours (for a retrieval grid) are kept, so memory grows with Q, not with Q x N.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lightly_grpo.evaluation._accumulate import PerQueryValues
from lightly_grpo.evaluation.knn import parse_protocol
from lightly_grpo.evaluation.metrics import (
    KNN_TOP,
    RETRIEVAL_METRICS,
    ClusterInputs,
    MetricSpec,
    RetrievalChunk,
    metric_spec,
)
from lightly_grpo.index import (
    ArrayLike,
    as_float_tensor,
    iter_knn_search,
    resolve_backend,
    spherical_kmeans,
)
from lightly_grpo.validation import check_finite


@dataclass
class RetrievalResult:
    """What :meth:`RetrievalEvaluator.evaluate` returns.

    Attributes:
        metrics: Flat metric name -> value (:func:`~lightly_grpo.evaluation.metric_spec` gives
            each key's display name and direction).
        per_class: Metric name -> {label: value} for P@1, R-precision, MAP@R and the kNN top-1
            of the first protocol.
        neighbors: (Q, n) int64 indices of each query's top reference items, best first.
        neighbor_labels: (Q, n) labels of those items.
        neighbor_similarities: (Q, n) cosine similarities of those items.
        info: Sizes and settings of the evaluation (for reports).

    Examples:
        >>> x = torch.randn(200, 16)
        >>> result = RetrievalEvaluator(knn_protocols=("dino",)).evaluate(x, torch.arange(200) % 4)
        >>> sorted(result.to_dict())
        ['info', 'metrics', 'per_class']
    """

    metrics: dict[str, float]
    per_class: dict[str, dict[int, float]]
    neighbors: Tensor
    neighbor_labels: Tensor
    neighbor_similarities: Tensor
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, include_neighbors: bool = False) -> dict[str, Any]:
        """JSON-serialisable form (class labels become string keys).

        Args:
            include_neighbors: Also include the neighbour indices, labels and similarities.
        """
        out: dict[str, Any] = {
            "metrics": dict(self.metrics),
            "per_class": {
                name: {str(label): value for label, value in values.items()}
                for name, values in self.per_class.items()
            },
            "info": dict(self.info),
        }
        if include_neighbors:
            out["neighbors"] = self.neighbors.tolist()
            out["neighbor_labels"] = self.neighbor_labels.tolist()
            out["neighbor_similarities"] = self.neighbor_similarities.tolist()
        return out


def _as_embeddings(x: ArrayLike, name: str) -> Tensor:
    """Non-empty, finite (rows, D) float embeddings ``x``, L2-normalised (``ValueError`` else)."""
    t = as_float_tensor(x, name)
    if t.shape[0] == 0:
        raise ValueError(f"empty set: {name} has shape {tuple(t.shape)}")
    check_finite({name: t})
    return F.normalize(t, dim=1)


def _as_labels(
    y: ArrayLike | Sequence[int], num_rows: int, name: str, device: torch.device
) -> Tensor:
    """``y`` as (num_rows,) int64 labels on ``device``; ``ValueError`` on a bad shape or values."""
    t = torch.as_tensor(np.asarray(y)) if not isinstance(y, Tensor) else y.detach()
    if t.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if len(t) != num_rows:
        raise ValueError(f"{name} has {len(t)} entries but the embeddings have {num_rows} rows")
    if t.is_floating_point():
        if not bool(torch.isfinite(t).all()) or not torch.equal(t, t.round()):
            raise ValueError(f"{name} must hold integer class labels, got non-integer values")
    elif t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name} must hold integer class labels, got dtype {t.dtype}")
    return t.to(device=device, dtype=torch.int64)


def _spec(name: str) -> MetricSpec:
    """The registered spec of metric ``name``."""
    spec = metric_spec(name)
    if spec is None:  # Every name below is built from a registered family.
        raise RuntimeError(f"metric {name!r} is not registered")
    return spec


def _load_inputs(
    query_embeddings: ArrayLike,
    query_labels: ArrayLike | Sequence[int],
    reference_embeddings: ArrayLike | None,
    reference_labels: ArrayLike | Sequence[int] | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Checks and converts the inputs of :meth:`RetrievalEvaluator.evaluate`.

    Returns:
        L2-normalised query embeddings, int64 query labels, L2-normalised reference embeddings
        and int64 reference labels, all on the queries' device; without references (leave-one-
        out) the references are the queries.

    Raises:
        ValueError: On empty, non-finite or mismatched embeddings, bad labels, or a reference
            set given without its labels (or the other way round).
    """
    query = _as_embeddings(query_embeddings, "query_embeddings")
    device = query.device
    q_labels = _as_labels(query_labels, len(query), "query_labels", device)
    if (reference_embeddings is None) != (reference_labels is None):
        raise ValueError(
            "give reference_embeddings and reference_labels together (or neither for leave-one-out)"
        )
    if reference_embeddings is None or reference_labels is None:
        return query, q_labels, query, q_labels
    reference = _as_embeddings(reference_embeddings, "reference_embeddings")
    if reference.shape[1] != query.shape[1]:
        raise ValueError(
            "query and reference embeddings differ in dimension: "
            f"{tuple(query.shape)} vs {tuple(reference.shape)}"
        )
    reference = reference.to(device)
    r_labels = _as_labels(reference_labels, len(reference), "reference_labels", device)
    return query, q_labels, reference, r_labels


@dataclass
class _Inputs:
    """Validated inputs of one evaluation and the class bookkeeping derived from them.

    Attributes:
        query: (Q, D) L2-normalised query embeddings.
        q_labels: (Q,) int64 query labels.
        reference: (N, D) L2-normalised reference embeddings (the queries in leave-one-out).
        leave_one_out: Whether each query is removed from its own results.
        classes: (C,) sorted labels over queries and references.
        q_ids: (Q,) int64 class index of each query (into ``classes``).
        r_ids: (N,) int64 class index of each reference.
        relevant: (Q,) int64 R: same-label references per query (minus itself in leave-one-out).
        max_bin: The largest R (``AccuracyCalculator``'s ``k="max_bin_count"``, minus self).
    """

    query: Tensor
    q_labels: Tensor
    reference: Tensor
    leave_one_out: bool
    classes: Tensor
    q_ids: Tensor
    r_ids: Tensor
    relevant: Tensor
    max_bin: int

    @classmethod
    def build(
        cls,
        query: Tensor,
        q_labels: Tensor,
        reference: Tensor,
        r_labels: Tensor,
        leave_one_out: bool,
    ) -> _Inputs:
        """Maps the labels to contiguous class ids (``knn_predict``'s class indices) and R."""
        all_labels = q_labels if leave_one_out else torch.cat([q_labels, r_labels])
        classes, inverse = torch.unique(all_labels, return_inverse=True)
        q_ids = inverse[: len(query)]
        r_ids = q_ids if leave_one_out else inverse[len(query) :]
        ref_counts = torch.bincount(r_ids, minlength=len(classes))
        relevant = ref_counts[q_ids] - int(leave_one_out)
        max_bin = int(relevant.max())
        return cls(
            query, q_labels, reference, leave_one_out, classes, q_ids, r_ids, relevant, max_bin
        )

    @property
    def num_q(self) -> int:
        """Number of queries."""
        return len(self.query)

    @property
    def num_r(self) -> int:
        """Number of references (the queries in leave-one-out)."""
        return len(self.reference)

    @property
    def available(self) -> int:
        """References a query can retrieve (without itself in leave-one-out)."""
        return self.num_r - int(self.leave_one_out)

    @property
    def num_classes(self) -> int:
        """Number of distinct labels over queries and references."""
        return len(self.classes)

    @property
    def num_query_classes(self) -> int:
        """Number of distinct query labels."""
        return len(self.q_ids.unique())

    @property
    def not_lone(self) -> Tensor:
        """(Q,) bool: whether a query has another reference item with its label."""
        return self.relevant > 0


def _check_metrics_finite(metrics: dict[str, float]) -> None:
    """Raises ``RuntimeError`` on a NaN/inf metric (the input checks should prevent one)."""
    for name, value in metrics.items():
        if not math.isfinite(value):  # Never hand back NaN silently.
            raise RuntimeError(f"metric {name} is not finite ({value})")


class RetrievalEvaluator:
    """Retrieval, kNN and clustering metrics for labelled embeddings (no Lightning needed).

    Args:
        recall_at: K values of Recall@K.
        knn_protocols: kNN protocols: names from :data:`KNN_PROTOCOLS` (``"dino"``: k=20,
            T=0.07; ``"lightly"``: k=200, T=0.1) or ``(k, T)`` tuples.
        backend: Search backend of :mod:`lightly_grpo.index` (``"auto"``, ``"faiss"``,
            ``"faiss-gpu"``, ``"tiled"``, ``"torch"``).
        chunk_size: Queries per search chunk; ``None`` picks it from a memory budget.
        nmi: Score one spherical k-means of the queries with ``cluster_metrics``.
        num_clusters: Clusters of that k-means; ``None`` uses the number of query labels.
        seed: Seed of the k-means initialisation.
        per_class: Fill :attr:`RetrievalResult.per_class`.
        retrieval: Compute P@1, R-precision, MAP@R, MAP and Recall@K (these need a search as
            deep as the largest class); ``False`` leaves only kNN (and NMI/AMI).
        num_neighbors: Top neighbours kept per query for a retrieval grid.
        progress: Show a tqdm bar while searching.
        cluster_metrics: The registered ``"clusters"`` metrics of that one k-means (``"nmi"``,
            ``"ami"``, ``"cluster_acc"``, ``"ari"``).

    Examples:
        >>> x = torch.randn(300, 32)
        >>> labels = torch.arange(300) % 3
        >>> result = RetrievalEvaluator().evaluate(x[:100], labels[:100], x[100:], labels[100:])
        >>> 0.0 <= result.metrics["mean_average_precision_at_r"] <= 1.0
        True
    """

    def __init__(
        self,
        *,
        recall_at: Sequence[int] = (1, 2, 4, 8),
        knn_protocols: Sequence[str | tuple[int, float]] = ("dino", "lightly"),
        backend: str = "auto",
        chunk_size: int | None = None,
        nmi: bool = True,
        num_clusters: int | None = None,
        seed: int = 0,
        per_class: bool = True,
        retrieval: bool = True,
        num_neighbors: int = 8,
        progress: bool = False,
        cluster_metrics: Sequence[str] = ("nmi", "ami"),
    ) -> None:
        for k in recall_at:
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ValueError(f"recall_at values must be integers >= 1, got {list(recall_at)}")
        if num_clusters is not None and num_clusters < 1:
            raise ValueError(f"num_clusters must be >= 1 or None, got {num_clusters}")
        if num_neighbors < 1:
            raise ValueError(f"num_neighbors must be >= 1, got {num_neighbors}")
        for name in cluster_metrics:
            spec = metric_spec(name)
            if spec is None or spec.needs != "clusters":
                raise ValueError(
                    f"cluster_metrics must name registered clustering metrics, got {name!r}"
                )
        resolve_backend(backend)  # Fail early on an unknown or unavailable backend.
        self.recall_at = tuple(sorted(set(recall_at)))
        self.protocols = [parse_protocol(p) for p in knn_protocols]
        self.knn_protocols = tuple(knn_protocols)
        self.backend = backend
        self.chunk_size = chunk_size
        self.nmi = nmi
        self.num_clusters = num_clusters
        self.seed = seed
        self.per_class = per_class
        self.retrieval = retrieval
        self.num_neighbors = num_neighbors
        self.progress = progress
        self.cluster_metrics = tuple(cluster_metrics)

    def replace(self, **changes: Any) -> RetrievalEvaluator:
        """A copy with some constructor arguments changed.

        Examples:
            >>> RetrievalEvaluator().replace(nmi=False, knn_protocols=()).metric_names()[:2]
            ['precision_at_1', 'r_precision']
        """
        options: dict[str, Any] = {
            "recall_at": self.recall_at,
            "knn_protocols": self.knn_protocols,
            "backend": self.backend,
            "chunk_size": self.chunk_size,
            "nmi": self.nmi,
            "num_clusters": self.num_clusters,
            "seed": self.seed,
            "per_class": self.per_class,
            "retrieval": self.retrieval,
            "num_neighbors": self.num_neighbors,
            "progress": self.progress,
            "cluster_metrics": self.cluster_metrics,
        }
        unknown = set(changes) - set(options)
        if unknown:
            raise ValueError(f"unknown RetrievalEvaluator arguments: {sorted(unknown)}")
        return RetrievalEvaluator(**{**options, **changes})

    def metric_names(self) -> list[str]:
        """The metric keys :meth:`evaluate` returns, in order.

        Examples:
            >>> RetrievalEvaluator(recall_at=(1,), knn_protocols=("dino",)).metric_names()
            ... # doctest: +NORMALIZE_WHITESPACE
            ['precision_at_1', 'r_precision', 'mean_average_precision_at_r',
             'mean_average_precision', 'recall_at_1', 'knn_top1_dino', 'knn_top5_dino', 'nmi',
             'ami']
        """
        names: list[str] = []
        if self.retrieval:
            names += list(RETRIEVAL_METRICS) + [f"recall_at_{k}" for k in self.recall_at]
        names += [f"knn_top{n}_{name}" for name, _, _ in self.protocols for n in KNN_TOP]
        if self.nmi:
            names += list(self.cluster_metrics)
        return names

    def evaluate(
        self,
        query_embeddings: ArrayLike,
        query_labels: ArrayLike | Sequence[int],
        reference_embeddings: ArrayLike | None = None,
        reference_labels: ArrayLike | Sequence[int] | None = None,
    ) -> RetrievalResult:
        """Evaluates queries against references, or leave-one-out within the queries.

        Args:
            query_embeddings: (Q, D) embeddings (tensor or numpy array, any device).
            query_labels: (Q,) integer labels.
            reference_embeddings: (N, D) gallery embeddings; ``None`` for leave-one-out.
            reference_labels: (N,) gallery labels; given exactly when the gallery is.

        Returns:
            A :class:`RetrievalResult`.

        Raises:
            ValueError: On an empty query set, differing dimensions, labels of the wrong
                length, NaN/inf embeddings, a K (Recall@K or kNN k) larger than the reference
                set, or no query label present among the references.
        """
        inputs = self._prepare_inputs(
            query_embeddings, query_labels, reference_embeddings, reference_labels
        )
        specs = [_spec(name) for name in self.metric_names()]
        n_show, search_k = self._search_depth(inputs)
        backend = resolve_backend(self.backend, inputs.query.device)
        values, neighbors, similarities = self._search(inputs, specs, n_show, search_k)
        not_lone = inputs.not_lone.cpu()
        metrics = values.means(not_lone)
        per_class = self._per_class(inputs, values, not_lone) if self.per_class else {}
        metrics.update(self._cluster_metrics(inputs, specs))
        _check_metrics_finite(metrics)
        return RetrievalResult(
            metrics=metrics,
            per_class=per_class,
            neighbors=neighbors,
            neighbor_labels=inputs.classes.cpu()[inputs.r_ids.cpu()[neighbors]],
            neighbor_similarities=similarities,
            info=self._info(inputs, search_k, backend),
        )

    def _prepare_inputs(
        self,
        query_embeddings: ArrayLike,
        query_labels: ArrayLike | Sequence[int],
        reference_embeddings: ArrayLike | None,
        reference_labels: ArrayLike | Sequence[int] | None,
    ) -> _Inputs:
        """Validates the inputs against the settings and derives the class bookkeeping.

        Raises:
            ValueError: As listed in :meth:`evaluate`.
        """
        query, q_labels, reference, r_labels = _load_inputs(
            query_embeddings, query_labels, reference_embeddings, reference_labels
        )
        leave_one_out = reference_embeddings is None
        self._check_reference_size(query, len(reference), leave_one_out)
        inputs = _Inputs.build(query, q_labels, reference, r_labels, leave_one_out)
        if self.retrieval and inputs.max_bin < 1:
            classes = inputs.classes[inputs.q_ids.unique()].tolist()[:10]
            raise ValueError(
                "no query has another reference item with its label, so retrieval metrics are "
                f"undefined (query labels {classes}...); use retrieval=False for kNN only"
            )
        if self.nmi and self._num_clusters(inputs) > inputs.num_q:
            raise ValueError(
                f"num_clusters={self._num_clusters(inputs)} exceeds the number of queries "
                f"({inputs.num_q})"
            )
        return inputs

    def _check_reference_size(self, query: Tensor, num_r: int, leave_one_out: bool) -> None:
        """Raises ``ValueError`` when a K (Recall@K, kNN k) exceeds the searchable references.

        Args:
            query: (Q, D) query embeddings (named in the leave-one-out message).
            num_r: Number of reference items (the queries themselves in leave-one-out).
            leave_one_out: Whether each query is removed from its own results.
        """
        available = num_r - int(leave_one_out)
        if available < 1:
            raise ValueError(
                f"leave-one-out needs at least 2 queries, got query_embeddings of shape "
                f"{tuple(query.shape)}"
            )
        minus_self = " minus the query itself" if leave_one_out else ""
        for k in self.recall_at if self.retrieval else ():
            if k > available:
                raise ValueError(
                    f"Recall@{k} needs at least {k} reference items, but there are {available} "
                    f"({num_r} references{minus_self})"
                )
        for name, k, _ in self.protocols:
            if k > available:
                raise ValueError(
                    f"kNN protocol {name!r} uses k={k} but there are only {available} reference "
                    f"items ({num_r}{minus_self}); pass a smaller (k, T) protocol"
                )

    def _num_clusters(self, inputs: _Inputs) -> int:
        """The k of the NMI/AMI k-means: ``num_clusters`` or the number of query labels."""
        return self.num_clusters or inputs.num_query_classes

    def _search_depth(self, inputs: _Inputs) -> tuple[int, int]:
        """Neighbours kept per query and the search depth (every K and, for retrieval, max R).

        Returns:
            ``(n_show, search_k)``.
        """
        n_show = min(self.num_neighbors, inputs.available)
        search_k = max([n_show] + [k for _, k, _ in self.protocols])
        if self.retrieval:
            search_k = max([search_k, inputs.max_bin] + list(self.recall_at))
        return n_show, search_k

    def _search(
        self, inputs: _Inputs, specs: Sequence[MetricSpec], n_show: int, search_k: int
    ) -> tuple[PerQueryValues, Tensor, Tensor]:
        """Runs the chunked exact search and scores every chunk with the per-query metrics.

        Args:
            inputs: The prepared inputs.
            specs: The metric specs to compute.
            n_show: Neighbours kept per query.
            search_k: Results searched per query.

        Returns:
            The per-query metric values, the (Q, n_show) int64 neighbour indices and their
            (Q, n_show) float32 similarities (all on the CPU).
        """
        values = PerQueryValues(specs, inputs.num_q)
        neighbors = torch.empty(inputs.num_q, n_show, dtype=torch.int64)
        neighbor_sims = torch.empty(inputs.num_q, n_show, dtype=torch.float32)
        knn_specs = {
            name: [_spec(f"knn_top{n}_{name}") for n in KNN_TOP] for name, _, _ in self.protocols
        }
        r_ids_small = inputs.r_ids.to(torch.int32)
        max_bin = inputs.max_bin
        ranks = torch.arange(
            1, max(max_bin, 1) + 1, device=inputs.query.device, dtype=torch.float64
        )
        for start, sims, idx in iter_knn_search(
            inputs.query,
            inputs.reference,
            search_k,
            metric="ip",
            backend=self.backend,
            chunk_size=self.chunk_size,
            exclude_self=inputs.leave_one_out,
            extra_bytes_per_query=80 * search_k,
            progress=self.progress,
        ):
            stop = start + len(idx)
            q_chunk = inputs.q_ids[start:stop].to(torch.int32)
            nb_ids = r_ids_small[idx]
            neighbors[start:stop] = idx[:, :n_show].cpu()
            neighbor_sims[start:stop] = sims[:, :n_show].cpu()
            if values.retrieval_specs:
                same = nb_ids == q_chunk[:, None]
                chunk = RetrievalChunk(same, inputs.relevant[start:stop], max_bin, ranks)
                values.add_retrieval(start, chunk)
            self._accumulate_knn(
                values, knn_specs, inputs.num_classes, start, sims, nb_ids, q_chunk
            )
        return values, neighbors, neighbor_sims

    def _accumulate_knn(
        self,
        values: PerQueryValues,
        knn_specs: dict[str, list[MetricSpec]],
        num_classes: int,
        start: int,
        sims: Tensor,
        nb_ids: Tensor,
        q_chunk: Tensor,
    ) -> None:
        """Adds the kNN votes of every protocol for one search chunk to ``values``.

        Args:
            values: The per-query values being filled.
            knn_specs: Protocol name -> its ``knn_top{N}`` specs.
            num_classes: Number of class indices.
            start: Index of the chunk's first query.
            sims: (B, search_k) similarities of the chunk's results, best first.
            nb_ids: (B, search_k) int32 class indices of those results.
            q_chunk: (B,) int32 class indices of the chunk's queries.
        """
        for name, k, temperature in self.protocols:
            values.add_knn(
                start,
                knn_specs[name],
                sims[:, :k],
                nb_ids[:, :k].long(),
                q_chunk.long(),
                num_classes,
                temperature,
            )

    def _per_class(
        self, inputs: _Inputs, values: PerQueryValues, not_lone: Tensor
    ) -> dict[str, dict[int, float]]:
        """P@1, R-precision, MAP@R and the first protocol's kNN top-1, averaged per class."""
        keys = list(RETRIEVAL_METRICS[:3]) if self.retrieval else []
        if self.protocols:
            keys.append(f"knn_top1_{self.protocols[0][0]}")
        class_names = [int(c) for c in inputs.classes.cpu().tolist()]
        return values.per_class(keys, inputs.q_ids.cpu(), not_lone, class_names)

    def _cluster_metrics(self, inputs: _Inputs, specs: Sequence[MetricSpec]) -> dict[str, float]:
        """NMI/AMI (the ``"clusters"`` specs) of a spherical k-means of the queries."""
        cluster_specs = [s for s in specs if s.needs == "clusters"]
        if not cluster_specs:
            return {}
        _, assignments = spherical_kmeans(
            inputs.query, self._num_clusters(inputs), seed=self.seed, backend=self.backend
        )
        clusters = ClusterInputs(inputs.q_labels.cpu().numpy(), assignments.cpu().numpy())
        return {spec.name: float(spec.fn(clusters)) for spec in cluster_specs if spec.fn}

    def _info(self, inputs: _Inputs, search_k: int, backend: str) -> dict[str, Any]:
        """Sizes and settings of one evaluation, for :attr:`RetrievalResult.info`.

        Args:
            inputs: The prepared inputs.
            search_k: Results searched per query.
            backend: The search backend that ran.
        """
        return {
            "num_queries": inputs.num_q,
            "num_references": inputs.num_r,
            "leave_one_out": inputs.leave_one_out,
            "num_classes": inputs.num_classes,
            "num_lone_queries": int((~inputs.not_lone).sum()),
            "max_bin_count": inputs.max_bin,
            "search_k": search_k,
            "backend": backend,
            "recall_at": list(self.recall_at) if self.retrieval else [],
            "knn_protocols": {name: [k, t] for name, k, t in self.protocols},
        }
