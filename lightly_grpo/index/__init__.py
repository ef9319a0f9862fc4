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

import warnings

from torch import Tensor

from lightly_grpo import validation
from lightly_grpo.index.approximate import IVFIndex, build_ivf_index, ivf_knn_search, recall_at_k
from lightly_grpo.index.kmeans import spherical_kmeans
from lightly_grpo.index.multi_gpu import (
    FaissGpuUnavailableError,
    faiss_gpu_index,
    search_faiss_index,
    sort_results,
)
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
    "FaissGpuUnavailableError",
    "IVFIndex",
    "Metric",
    "as_float_tensor",
    "auto_chunk_size",
    "available_backends",
    "build_ivf_index",
    "candidate_capacity",
    "check_finite",
    "faiss",
    "faiss_gpu_index",
    "faiss_num_gpus",
    "ivf_knn_search",
    "iter_knn_search",
    "knn_search",
    "recall_at_k",
    "resolve_backend",
    "search_faiss_index",
    "sort_results",
    "spherical_kmeans",
    "tiled_available",
    "tiled_knn_chunks",
]


def check_finite(x: Tensor, name: str) -> None:
    """Deprecated: use ``lightly_grpo.validation.check_finite({name: x})``.

    Examples:
        >>> import torch
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", DeprecationWarning)
        ...     check_finite(torch.zeros(2, 2), "x")
    """
    warnings.warn(
        "lightly_grpo.index.check_finite is deprecated; use "
        "lightly_grpo.validation.check_finite({name: tensor})",
        DeprecationWarning,
        stacklevel=2,
    )
    validation.check_finite({name: x})
