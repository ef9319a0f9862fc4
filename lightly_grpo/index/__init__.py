"""Exact k-nearest-neighbour search and spherical k-means over embeddings.

- :mod:`lightly_grpo.index.search`: backends (``"faiss-gpu"``, ``"tiled"``, ``"faiss"``,
  ``"torch"``), :func:`knn_search` and its chunk-by-chunk form :func:`iter_knn_search`.
- :mod:`lightly_grpo.index.kmeans`: :func:`spherical_kmeans` (FAISS's k-means where installed).
- :mod:`lightly_grpo.index.tiled`: the compiled CPU search behind the ``"tiled"`` backend.

Examples:
    >>> import torch
    >>> x = torch.nn.functional.normalize(torch.randn(100, 8), dim=1)
    >>> knn_search(x, x, 3, exclude_self=True)[1].shape
    torch.Size([100, 3])
"""

from __future__ import annotations

from lightly_grpo.index.kmeans import spherical_kmeans
from lightly_grpo.index.search import (
    BACKENDS,
    DEFAULT_MEMORY_BUDGET_BYTES,
    FAISS_GPU_MAX_K,
    ArrayLike,
    Metric,
    as_float_tensor,
    auto_chunk_size,
    available_backends,
    faiss,
    faiss_num_gpus,
    iter_knn_search,
    knn_search,
    resolve_backend,
)
from lightly_grpo.index.tiled import candidate_capacity, tiled_available, tiled_knn_chunks

__all__ = [
    "BACKENDS",
    "DEFAULT_MEMORY_BUDGET_BYTES",
    "FAISS_GPU_MAX_K",
    "ArrayLike",
    "Metric",
    "as_float_tensor",
    "auto_chunk_size",
    "available_backends",
    "candidate_capacity",
    "faiss",
    "faiss_num_gpus",
    "iter_knn_search",
    "knn_search",
    "resolve_backend",
    "spherical_kmeans",
    "tiled_available",
    "tiled_knn_chunks",
]
