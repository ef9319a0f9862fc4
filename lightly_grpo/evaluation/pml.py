"""pytorch-metric-learning's ``AccuracyCalculator`` on this package's exact search.

:func:`make_knn_func` gives a ``knn_func`` that runs :func:`lightly_grpo.index.knn_search`, so
``AccuracyCalculator`` works without FAISS, on any size, and with the same tie order as
:class:`~lightly_grpo.evaluation.RetrievalEvaluator`.
"""

from __future__ import annotations

from torch import Tensor

from lightly_grpo.index import knn_search, resolve_backend


class IndexKNN:
    """A ``knn_func`` for pytorch-metric-learning's ``AccuracyCalculator`` on our index layer.

    Called as ``knn_func(query, k, reference, ref_includes_query)`` and returns
    ``(distances, indices)`` like pytorch-metric-learning's ``FaissKNN``: with
    ``ref_includes_query`` query i is reference i and is removed from its own results.
    Works without FAISS (``backend="torch"``) and on any size (chunked search).

    Args:
        backend: Search backend (``"auto"``, ``"faiss"``, ``"faiss-gpu"``, ``"torch"``).
        chunk_size: Queries per chunk; ``None`` picks it from a memory budget.
        metric: ``"l2"`` (squared distances, as ``FaissKNN``'s default ``IndexFlatL2``) or
            ``"ip"`` (similarities).

    Examples:
        >>> import torch
        >>> x = torch.nn.functional.normalize(torch.randn(50, 8), dim=1)
        >>> distances, indices = IndexKNN(backend="torch")(x, 3, x, True)
        >>> indices.shape
        torch.Size([50, 3])
    """

    def __init__(
        self, backend: str = "auto", chunk_size: int | None = None, metric: str = "l2"
    ) -> None:
        if metric not in ("ip", "l2"):
            raise ValueError(f"metric must be 'ip' or 'l2', got {metric!r}")
        resolve_backend(backend)
        self.backend = backend
        self.chunk_size = chunk_size
        self.metric = metric

    def __call__(
        self,
        query: Tensor,
        k: int,
        reference: Tensor | None = None,
        ref_includes_query: bool = False,
    ) -> tuple[Tensor, Tensor]:
        ref = query if reference is None else reference
        values, indices = knn_search(
            query,
            ref,
            int(k),
            metric="ip" if self.metric == "ip" else "l2",
            backend=self.backend,
            chunk_size=self.chunk_size,
            exclude_self=ref_includes_query,
        )
        return values.to(query.device), indices.to(query.device)


def make_knn_func(
    backend: str = "auto", chunk_size: int | None = None, metric: str = "l2"
) -> IndexKNN:
    """A ``knn_func`` for ``AccuracyCalculator`` that runs on :func:`lightly_grpo.index.knn_search`.

    Examples:
        >>> from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
        >>> calc = AccuracyCalculator(knn_func=make_knn_func(backend="torch"), k="max_bin_count")
    """
    return IndexKNN(backend=backend, chunk_size=chunk_size, metric=metric)
