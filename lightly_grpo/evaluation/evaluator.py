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

from lightly_grpo.evaluation.knn import knn_votes, parse_protocol
from lightly_grpo.evaluation.metrics import (
    KNN_TOP,
    RETRIEVAL_METRICS,
    ClusterInputs,
    KNNChunk,
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
    t = as_float_tensor(x, name)
    if t.shape[0] == 0:
        raise ValueError(f"empty set: {name} has shape {tuple(t.shape)}")
    check_finite({name: t})
    return F.normalize(t, dim=1)


def _as_labels(
    y: ArrayLike | Sequence[int], num_rows: int, name: str, device: torch.device
) -> Tensor:
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
    spec = metric_spec(name)
    if spec is None:  # Every name below is built from a registered family.
        raise RuntimeError(f"metric {name!r} is not registered")
    return spec


class RetrievalEvaluator:
    """Retrieval, kNN and clustering metrics for labelled embeddings (no Lightning needed).

    Args:
        recall_at: K values of Recall@K.
        knn_protocols: kNN protocols: names from :data:`KNN_PROTOCOLS` (``"dino"``: k=20,
            T=0.07; ``"lightly"``: k=200, T=0.1) or ``(k, T)`` tuples.
        backend: Search backend of :mod:`lightly_grpo.index` (``"auto"``, ``"faiss"``,
            ``"faiss-gpu"``, ``"tiled"``, ``"torch"``).
        chunk_size: Queries per search chunk; ``None`` picks it from a memory budget.
        nmi: Compute NMI/AMI from spherical k-means on the queries.
        num_clusters: Clusters for NMI/AMI; ``None`` uses the number of query labels.
        seed: Seed of the k-means initialisation.
        per_class: Fill :attr:`RetrievalResult.per_class`.
        retrieval: Compute P@1, R-precision, MAP@R, MAP and Recall@K (these need a search as
            deep as the largest class); ``False`` leaves only kNN (and NMI/AMI).
        num_neighbors: Top neighbours kept per query for a retrieval grid.
        progress: Show a tqdm bar while searching.

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
    ) -> None:
        for k in recall_at:
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ValueError(f"recall_at values must be integers >= 1, got {list(recall_at)}")
        if num_clusters is not None and num_clusters < 1:
            raise ValueError(f"num_clusters must be >= 1 or None, got {num_clusters}")
        if num_neighbors < 1:
            raise ValueError(f"num_neighbors must be >= 1, got {num_neighbors}")
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
            names += ["nmi", "ami"]
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
        query = _as_embeddings(query_embeddings, "query_embeddings")
        device = query.device
        q_labels = _as_labels(query_labels, len(query), "query_labels", device)
        if (reference_embeddings is None) != (reference_labels is None):
            raise ValueError(
                "give reference_embeddings and reference_labels together (or neither for "
                "leave-one-out)"
            )
        leave_one_out = reference_embeddings is None
        if leave_one_out:
            reference, r_labels = query, q_labels
        else:
            assert reference_embeddings is not None and reference_labels is not None
            reference = _as_embeddings(reference_embeddings, "reference_embeddings")
            if reference.shape[1] != query.shape[1]:
                raise ValueError(
                    "query and reference embeddings differ in dimension: "
                    f"{tuple(query.shape)} vs {tuple(reference.shape)}"
                )
            reference = reference.to(device)
            r_labels = _as_labels(reference_labels, len(reference), "reference_labels", device)

        num_q, num_r = len(query), len(reference)
        self_count = int(leave_one_out)
        available = num_r - self_count
        if available < 1:
            raise ValueError(
                f"leave-one-out needs at least 2 queries, got query_embeddings of shape "
                f"{tuple(query.shape)}"
            )
        for k in self.recall_at if self.retrieval else ():
            if k > available:
                raise ValueError(
                    f"Recall@{k} needs at least {k} reference items, but there are {available} "
                    f"({num_r} references{' minus the query itself' if leave_one_out else ''})"
                )
        for name, k, _ in self.protocols:
            if k > available:
                raise ValueError(
                    f"kNN protocol {name!r} uses k={k} but there are only {available} reference "
                    f"items ({num_r}{' minus the query itself' if leave_one_out else ''}); "
                    "pass a smaller (k, T) protocol"
                )

        # Contiguous class ids over query and reference labels (knn_predict's class indices).
        all_labels = q_labels if leave_one_out else torch.cat([q_labels, r_labels])
        classes, inverse = torch.unique(all_labels, return_inverse=True)
        num_classes = len(classes)
        q_ids = inverse[:num_q]
        r_ids = q_ids if leave_one_out else inverse[num_q:]
        ref_counts = torch.bincount(r_ids, minlength=num_classes)
        relevant = ref_counts[q_ids] - self_count  # R per query.
        not_lone = relevant > 0
        max_bin = int(relevant.max())  # AccuracyCalculator's k="max_bin_count" (minus self).
        if self.retrieval and max_bin < 1:
            raise ValueError(
                "no query has another reference item with its label, so retrieval metrics are "
                f"undefined (query labels {classes[q_ids.unique()].tolist()[:10]}...); use "
                "retrieval=False for kNN only"
            )

        clusters = self.num_clusters or len(q_ids.unique())
        if self.nmi and clusters > num_q:
            raise ValueError(f"num_clusters={clusters} exceeds the number of queries ({num_q})")

        n_show = min(self.num_neighbors, available)
        search_k = max([n_show] + [k for _, k, _ in self.protocols])
        if self.retrieval:
            search_k = max([search_k, max_bin] + list(self.recall_at))

        specs = [_spec(name) for name in self.metric_names()]
        retrieval_specs = [s for s in specs if s.needs == "retrieval"]
        knn_specs = {
            name: [_spec(f"knn_top{n}_{name}") for n in KNN_TOP] for name, _, _ in self.protocols
        }
        per_query = {
            s.name: torch.zeros(num_q, dtype=torch.float64) for s in specs if s.needs != "clusters"
        }
        neighbors = torch.empty(num_q, n_show, dtype=torch.int64)
        neighbor_sims = torch.empty(num_q, n_show, dtype=torch.float32)

        r_ids_small = r_ids.to(torch.int32)
        ranks = torch.arange(1, max(max_bin, 1) + 1, device=device, dtype=torch.float64)
        resolved = resolve_backend(self.backend, device)
        for start, sims, idx in iter_knn_search(
            query,
            reference,
            search_k,
            metric="ip",
            backend=self.backend,
            chunk_size=self.chunk_size,
            exclude_self=leave_one_out,
            extra_bytes_per_query=80 * search_k,
            progress=self.progress,
        ):
            stop = start + len(idx)
            q_chunk = q_ids[start:stop].to(torch.int32)
            nb_ids = r_ids_small[idx]
            neighbors[start:stop] = idx[:, :n_show].cpu()
            neighbor_sims[start:stop] = sims[:, :n_show].cpu()
            if retrieval_specs:
                chunk = RetrievalChunk(
                    nb_ids == q_chunk[:, None], relevant[start:stop], max_bin, ranks
                )
                for spec in retrieval_specs:
                    per_query[spec.name][start:stop] = spec.fn(chunk).cpu()
            for name, k, temperature in self.protocols:
                targets = q_chunk.long()
                for rows, pred in knn_votes(
                    sims[:, :k], nb_ids[:, :k].long(), num_classes, temperature
                ):
                    votes = KNNChunk(pred, targets[rows])
                    first = start + (rows.start or 0)
                    for spec in knn_specs[name]:
                        values = spec.fn(votes).cpu()
                        per_query[spec.name][first : first + len(values)] = values

        not_lone_cpu = not_lone.cpu()
        metrics: dict[str, float] = {}
        for spec in specs:
            if spec.needs == "clusters":
                continue
            values = per_query[spec.name]
            # kNN accuracy averages over all queries (as lightly does); retrieval metrics leave
            # out lone queries (as AccuracyCalculator does).
            subset = values if spec.needs == "knn" else values[not_lone_cpu]
            metrics[spec.name] = float(subset.mean())

        per_class: dict[str, dict[int, float]] = {}
        if self.per_class:
            class_names = [int(c) for c in classes.cpu().tolist()]
            q_ids_cpu = q_ids.cpu()
            keys = list(RETRIEVAL_METRICS[:3]) if self.retrieval else []
            if self.protocols:
                keys.append(f"knn_top1_{self.protocols[0][0]}")
            for key in keys:
                mask = (
                    torch.ones(num_q, dtype=torch.bool) if key.startswith("knn_") else not_lone_cpu
                )
                ids = q_ids_cpu[mask]
                sums = torch.bincount(ids, weights=per_query[key][mask], minlength=num_classes)
                counts = torch.bincount(ids, minlength=num_classes)
                per_class[key] = {
                    class_names[c]: float(sums[c] / counts[c])
                    for c in range(num_classes)
                    if counts[c] > 0
                }

        cluster_specs = [s for s in specs if s.needs == "clusters"]
        if cluster_specs:
            _, assignments = spherical_kmeans(query, clusters, seed=self.seed, backend=self.backend)
            inputs = ClusterInputs(q_labels.cpu().numpy(), assignments.cpu().numpy())
            for spec in cluster_specs:
                metrics[spec.name] = float(spec.fn(inputs))

        for name, value in metrics.items():
            if not math.isfinite(value):  # Guarded above; never hand back NaN silently.
                raise RuntimeError(f"metric {name} is not finite ({value})")

        classes_cpu = classes.cpu()
        info: dict[str, Any] = {
            "num_queries": num_q,
            "num_references": num_r,
            "leave_one_out": leave_one_out,
            "num_classes": num_classes,
            "num_lone_queries": int((~not_lone).sum()),
            "max_bin_count": max_bin,
            "search_k": search_k,
            "backend": resolved,
            "recall_at": list(self.recall_at) if self.retrieval else [],
            "knn_protocols": {name: [k, t] for name, k, t in self.protocols},
        }
        return RetrievalResult(
            metrics=metrics,
            per_class=per_class,
            neighbors=neighbors,
            neighbor_labels=classes_cpu[r_ids.cpu()[neighbors]],
            neighbor_similarities=neighbor_sims,
            info=info,
        )
