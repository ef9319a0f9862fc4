"""Property-based fuzzing of the kNN search (every available backend), k-means and the clustering
metrics: finite results or clear errors, never a crash inside torch or FAISS."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from lightly_grpo.evaluation.clustering import (
    clustering_scores,
    kmeans_clustering_scores,
    neighbor_purity,
)
from lightly_grpo.evaluation.metrics import (
    RETRIEVAL_METRICS,
    RetrievalChunk,
    metric_spec,
)
from lightly_grpo.index import available_backends, knn_search, spherical_kmeans
from tests.test_fuzz_losses import assert_finite_or_clear_error, hostile_tensors

FUZZ = settings(max_examples=40, deadline=None, derandomize=True)
#: CPU backends this machine has (``faiss-gpu`` needs CUDA data, covered by the GPU tests).
BACKENDS = [b for b in available_backends() if b != "faiss-gpu"]
#: k at, past and far past the reference count, and values of the wrong type.
K_VALUES: tuple[Any, ...] = (1, 2, 3, 5, 8, 0, -1, 2.0, True, None, "3")


def _search_all_backends(
    queries: Any, references: Any, k: Any, names: list[str], **kwargs: Any
) -> dict[str, tuple[Tensor, Tensor] | None]:
    """knn_search on every backend under the property; every backend must answer the same way
    (all with a result or all with an error)."""
    results = {
        backend: assert_finite_or_clear_error(
            lambda: knn_search(queries, references, k, backend=backend, **kwargs),  # noqa: B023
            names=names,
        )
        for backend in BACKENDS
    }
    assert len({result is None for result in results.values()}) == 1, results
    return results


@FUZZ
@given(
    data=st.data(),
    num_queries=st.integers(1, 4),
    num_references=st.integers(1, 5),
    dim=st.sampled_from([1, 3, 8]),
    metric=st.sampled_from(["ip", "l2"]),
    exclude_self=st.booleans(),
    chunk_size=st.sampled_from([None, 1, 2]),
)
def test_knn_search_on_hostile_values_is_finite_or_a_clear_error_on_every_backend(
    data: st.DataObject,
    num_queries: int,
    num_references: int,
    dim: int,
    metric: str,
    exclude_self: bool,
    chunk_size: int | None,
) -> None:
    if exclude_self:
        num_references = max(num_references, num_queries, 2)
    queries = data.draw(hostile_tensors((num_queries, dim)), label="queries")
    references = data.draw(
        hostile_tensors((num_references, dim), dtypes=[queries.dtype]), label="references"
    )
    if exclude_self and data.draw(st.booleans(), label="references are the queries"):
        references = queries if num_queries >= 2 else references
    # k at the number of references (or that minus the query itself) included.
    k = data.draw(st.integers(1, len(references) - int(exclude_self)), label="k")
    if data.draw(st.booleans(), label="as numpy") and queries.dtype != torch.bfloat16:
        queries, references = queries.numpy(), references.numpy()  # NumPy has no bfloat16
    results = _search_all_backends(
        queries,
        references,
        k,
        names=["queries", "references"],
        metric=metric,
        chunk_size=chunk_size,
        exclude_self=exclude_self,
    )
    for result in results.values():
        if result is None:
            continue
        values, indices = result
        rows = len(queries)
        assert values.shape == indices.shape == (rows, k)
        assert bool(((indices >= 0) & (indices < len(references))).all())
        if exclude_self:
            assert not bool((indices == torch.arange(rows)[:, None]).any())
        # Best first: similarities descend, squared distances ascend.
        steps = values[:, 1:] - values[:, :-1]
        assert bool((steps <= 0).all() if metric == "ip" else (steps >= 0).all())


@FUZZ
@given(
    num_queries=st.integers(0, 3),
    num_references=st.integers(0, 4),
    dims=st.sampled_from([(2, 2), (0, 0), (2, 3)]),
    k=st.sampled_from(K_VALUES),
    exclude_self=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.int64, torch.bool, torch.complex64]),
)
def test_knn_search_rejects_bad_shapes_and_k_by_name(
    num_queries: int,
    num_references: int,
    dims: tuple[int, int],
    k: Any,
    exclude_self: bool,
    dtype: torch.dtype,
) -> None:
    queries = torch.ones(num_queries, dims[0], dtype=dtype)
    references = torch.ones(num_references, dims[1], dtype=dtype)
    results = _search_all_backends(
        queries,
        references,
        k,
        names=["queries", "references", "k", "dimension", "exclude_self"],
        exclude_self=exclude_self,
    )
    for result in results.values():
        if result is not None:
            assert result[0].shape == (num_queries, k)


@FUZZ
@given(
    data=st.data(),
    num_points=st.integers(1, 6),
    dim=st.sampled_from([1, 4]),
    iterations=st.sampled_from([0, 2]),
    seed=st.sampled_from([0, 7]),
    backend=st.sampled_from(BACKENDS),
)
def test_spherical_kmeans_on_hostile_values_is_finite_or_a_clear_error(
    data: st.DataObject, num_points: int, dim: int, iterations: int, seed: int, backend: str
) -> None:
    x = data.draw(hostile_tensors((num_points, dim)), label="x")
    num_clusters = data.draw(st.integers(1, num_points), label="num_clusters")
    result = assert_finite_or_clear_error(
        lambda: spherical_kmeans(
            x, num_clusters, iterations=iterations, seed=seed, backend=backend
        ),
        names=["x"],
    )
    if result is not None:
        centroids, assignments = result
        assert centroids.shape == (num_clusters, dim)
        assert assignments.shape == (num_points,)
        assert bool(((assignments >= 0) & (assignments < num_clusters)).all())


@FUZZ
@given(
    num_points=st.integers(0, 3),
    dim=st.sampled_from([1, 0]),
    num_clusters=st.sampled_from([1, 3, 4, 0, 2.0, True]),
    iterations=st.sampled_from([0, 2, -1, 1.5, None]),
    seed=st.sampled_from([0, -1, 2**31, 2**40, 1.0]),
    backend=st.sampled_from([*BACKENDS, "gpu"]),
)
def test_spherical_kmeans_rejects_bad_arguments_by_name(
    num_points: int, dim: int, num_clusters: Any, iterations: Any, seed: Any, backend: str
) -> None:
    x = torch.randn(num_points, dim, generator=torch.Generator().manual_seed(0))
    assert_finite_or_clear_error(
        lambda: spherical_kmeans(
            x, num_clusters, iterations=iterations, seed=seed, backend=backend
        ),
        names=["x", "num_clusters", "iterations", "seed", "backend"],
    )


@FUZZ
@given(
    data=st.data(),
    num_points=st.integers(0, 6),
    k=st.sampled_from([1, 2, 5, 6, 0, 1.0]),
    labels=st.sampled_from(["ok", "one_class", "negative", "float", "short"]),
)
def test_clustering_metrics_are_finite_and_bounded_or_a_clear_error(
    data: st.DataObject, num_points: int, k: Any, labels: str
) -> None:
    embeddings = data.draw(hostile_tensors((num_points, 4)), label="embeddings")
    label_array: Any = {
        "ok": np.arange(num_points) % 2,
        "one_class": np.zeros(num_points, dtype=np.int64),
        "negative": -np.ones(num_points, dtype=np.int64),
        "float": np.zeros(num_points),
        "short": np.zeros(max(num_points - 1, 0), dtype=np.int64),
    }[labels]
    names = ["embeddings", "labels", "k", "num_clusters", "predictions"]
    purity = assert_finite_or_clear_error(
        lambda: neighbor_purity(embeddings, label_array, k=k, backend="torch"), names=names
    )
    if purity is not None:
        assert 0.0 <= purity <= 1.0
    scores = assert_finite_or_clear_error(
        lambda: kmeans_clustering_scores(embeddings, label_array, backend="torch"), names=names
    )
    if scores is not None:
        assert 0.0 <= scores["cluster_acc"] <= 1.0 and -1.0 <= scores["ari"] <= 1.0
        assert all(math.isfinite(value) for value in scores.values())
    perfect = assert_finite_or_clear_error(
        lambda: clustering_scores(label_array, label_array), names=names
    )
    if perfect is not None:
        assert perfect["cluster_acc"] == 1.0


@FUZZ
@given(
    seed=st.integers(0, 2**16),
    batch=st.integers(1, 4),
    search_k=st.integers(1, 6),
    lone=st.booleans(),
)
def test_retrieval_metrics_lie_in_the_unit_interval(
    seed: int, batch: int, search_k: int, lone: bool
) -> None:
    g = torch.Generator().manual_seed(seed)
    same = torch.rand(batch, search_k, generator=g) < 0.5
    relevant = torch.randint(0, search_k + 1, (batch,), generator=g)
    if lone:
        relevant[0] = 0  # a query without another item of its class (dropped by the evaluator)
        same[0] = False
    relevant = torch.maximum(relevant, same.sum(dim=1))  # R counts at least the hits found
    max_bin = max(int(relevant.max()), 1)
    ranks = torch.arange(1, max_bin + 1, dtype=torch.float64)
    chunk = RetrievalChunk(same, relevant, max_bin, ranks)
    for name in (*RETRIEVAL_METRICS, "recall_at_1", f"recall_at_{search_k}"):
        spec = metric_spec(name)
        assert spec is not None
        values: Tensor = spec.fn(chunk)
        assert values.shape == (batch,)
        assert bool(torch.isfinite(values).all()), name
        assert bool(((values >= 0) & (values <= 1 + 1e-12)).all()), (name, values)
