"""Clustering metrics (ACC, NMI, ARI), the k-means-on-embeddings baseline and neighbour purity.

- :func:`clustering_accuracy`: unsupervised clustering accuracy. Cluster ids are matched to
  classes one-to-one by the Hungarian algorithm on the contingency matrix; with more clusters
  than classes the unmatched clusters count as wrong, with fewer the unmatched classes do.
- :func:`clustering_scores`: ACC together with scikit-learn's NMI (arithmetic-mean
  normalisation) and adjusted Rand index.
- :func:`kmeans_clustering_scores`: those scores for a spherical k-means of the embeddings.
- :func:`neighbor_purity`: how many of each item's cosine k nearest neighbours share its label.

Examples:
    >>> import numpy as np
    >>> scores = clustering_scores(np.array([2, 2, 0, 0]), np.array([0, 0, 1, 1]))
    >>> {name: round(value, 6) for name, value in scores.items()}
    {'cluster_acc': 1.0, 'nmi': 1.0, 'ari': 1.0}
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from torch import Tensor

from lightly_grpo.index.kmeans import spherical_kmeans
from lightly_grpo.index.search import ArrayLike, as_finite_float_tensor, knn_search

__all__ = [
    "clustering_accuracy",
    "clustering_scores",
    "kmeans_clustering_scores",
    "neighbor_purity",
]


def _as_ids(values: ArrayLike | Sequence[int], name: str) -> np.ndarray:
    """``values`` as a non-empty 1-D int64 NumPy array of non-negative integers.

    Raises:
        ValueError: On a non-array input, a shape other than (N,), an empty array, a
            non-integer dtype (floats, bools, ...) or negative values.
    """
    if isinstance(values, Tensor):
        array = values.detach().cpu().numpy()
    else:
        try:
            array = np.asarray(values)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{name} must be a 1-D array of integers: {error}") from error
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D with shape (N,), got shape {tuple(array.shape)}")
    if array.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(array.shape)})")
    # Bools are numpy integers in spirit only; a bool array here is almost surely a mask.
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {array.dtype}")
    minimum = int(array.min())
    if minimum < 0:
        position = int(np.argmin(array))
        raise ValueError(
            f"{name} must hold non-negative integers, got {minimum} at position {position}"
        )
    return array.astype(np.int64, copy=False)


def _as_id_pair(
    predictions: ArrayLike | Sequence[int], labels: ArrayLike | Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Validated predictions and labels of equal length."""
    pred = _as_ids(predictions, "predictions")
    true = _as_ids(labels, "labels")
    if len(pred) != len(true):
        raise ValueError(
            f"predictions and labels differ in length: {len(pred)} predictions vs "
            f"{len(true)} labels"
        )
    return pred, true


def _contingency(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(clusters, classes) counts over the distinct ids actually present.

    Ids are compacted first, so sparse ids (e.g. cluster 1000 of 3) cost no memory.
    """
    _, pred_ids = np.unique(pred, return_inverse=True)
    _, true_ids = np.unique(true, return_inverse=True)
    pred_ids, true_ids = pred_ids.reshape(-1), true_ids.reshape(-1)
    table = np.zeros((int(pred_ids.max()) + 1, int(true_ids.max()) + 1), dtype=np.int64)
    np.add.at(table, (pred_ids, true_ids), 1)
    return table


def _accuracy(pred: np.ndarray, true: np.ndarray) -> float:
    """ACC of validated ids: the most items a one-to-one cluster-to-class map gets right."""
    table = _contingency(pred, true)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum()) / len(pred)


def clustering_accuracy(
    predictions: ArrayLike | Sequence[int], labels: ArrayLike | Sequence[int]
) -> float:
    """Unsupervised clustering accuracy (ACC).

    Each cluster id is matched to at most one class and each class to at most one cluster, so
    as to maximise the number of items whose cluster is matched to their class (Hungarian
    algorithm, ``scipy.optimize.linear_sum_assignment`` on the contingency matrix). ACC is that
    number over N. The numbers of clusters and classes may differ: items of an unmatched
    cluster (more clusters than classes) or class (fewer) count as wrong. The ids themselves
    are arbitrary non-negative integers; only which items share one matters.

    Args:
        predictions: (N,) cluster ids, a torch tensor or NumPy array of non-negative integers.
        labels: (N,) class labels, same type rules.

    Returns:
        ACC in [0, 1].

    Raises:
        ValueError: On empty or non-1-D input, differing lengths, non-integer dtypes or
            negative values.

    Examples:
        >>> clustering_accuracy(torch.tensor([0, 0, 1, 1, 1, 2]), torch.tensor([1, 1, 0, 0, 2, 2]))
        0.8333333333333334
    """
    pred, true = _as_id_pair(predictions, labels)
    return _accuracy(pred, true)


def clustering_scores(
    predictions: ArrayLike | Sequence[int], labels: ArrayLike | Sequence[int]
) -> dict[str, float]:
    """ACC, NMI and ARI of a clustering against class labels.

    Args:
        predictions: (N,) cluster ids, a torch tensor or NumPy array of non-negative integers.
        labels: (N,) class labels, same type rules.

    Returns:
        ``{"cluster_acc": ACC (see :func:`clustering_accuracy`), "nmi": scikit-learn's
        ``normalized_mutual_info_score`` (arithmetic-mean normalisation), "ari":
        ``adjusted_rand_score``}``. All are 1 for a clustering equal to the labels up to a
        renaming of ids; NMI and ARI are about 0 for an unrelated one (ARI may go below 0).

    Raises:
        ValueError: As :func:`clustering_accuracy`.

    Examples:
        >>> scores = clustering_scores(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]))
        >>> scores["cluster_acc"], round(scores["nmi"], 6), round(scores["ari"], 6)
        (0.5, 0.0, -0.5)
    """
    pred, true = _as_id_pair(predictions, labels)
    return {
        "cluster_acc": _accuracy(pred, true),
        "nmi": float(normalized_mutual_info_score(true, pred)),
        "ari": float(adjusted_rand_score(true, pred)),
    }


def _check_embeddings_and_labels(
    embeddings: ArrayLike, labels: ArrayLike | Sequence[int]
) -> tuple[Tensor, np.ndarray]:
    """Embeddings as a (N, D) float32 tensor and labels as (N,) ids (``ValueError`` else)."""
    if not isinstance(embeddings, (Tensor, np.ndarray)):
        raise ValueError(
            f"embeddings must be a torch.Tensor or NumPy array of shape (N, D), got "
            f"{type(embeddings).__name__}"
        )
    if embeddings.ndim != 2:
        raise ValueError(
            f"embeddings must be 2-D with shape (N, D), got shape {tuple(embeddings.shape)}"
        )
    if embeddings.shape[0] == 0 or embeddings.shape[1] == 0:
        raise ValueError(f"embeddings are empty (shape {tuple(embeddings.shape)})")
    x = as_finite_float_tensor(embeddings, "embeddings")
    y = _as_ids(labels, "labels")
    if len(y) != x.shape[0]:
        raise ValueError(
            f"labels have {len(y)} entries but the embeddings have {x.shape[0]} rows "
            f"(shape {tuple(x.shape)})"
        )
    return x, y


def kmeans_clustering_scores(
    embeddings: ArrayLike,
    labels: ArrayLike | Sequence[int],
    num_clusters: int | None = None,
    seed: int = 0,
    backend: str = "auto",
) -> dict[str, float]:
    """ACC, NMI and ARI of a spherical k-means of the embeddings (the k-means baseline).

    Runs :func:`lightly_grpo.index.kmeans.spherical_kmeans` (cosine, k-means++ seeding) and
    scores its assignments with :func:`clustering_scores`.

    Args:
        embeddings: (N, D) float tensor or NumPy array; L2-normalised by the k-means.
        labels: (N,) non-negative integer class labels.
        num_clusters: Number of clusters; ``None`` uses the number of distinct labels.
        seed: Seed of the k-means initialisation.
        backend: Search backend of the k-means (``"auto"``, ``"faiss"``, ``"faiss-gpu"``,
            ``"tiled"`` or ``"torch"``).

    Returns:
        ``{"cluster_acc", "nmi", "ari"}`` as :func:`clustering_scores`.

    Raises:
        ValueError: On non-2-D, empty or non-finite embeddings, bad labels, a length
            mismatch, or ``num_clusters`` outside ``[1, N]``.

    Examples:
        >>> x = torch.cat([torch.randn(50, 8) * 0.05 + 1.0, torch.randn(50, 8) * 0.05 - 1.0])
        >>> y = torch.arange(100) // 50
        >>> kmeans_clustering_scores(x, y)["cluster_acc"]
        1.0
    """
    x, y = _check_embeddings_and_labels(embeddings, labels)
    if num_clusters is None:
        num_clusters = len(np.unique(y))
    _, assignments = spherical_kmeans(x, num_clusters, seed=seed, backend=backend)
    return clustering_scores(assignments.cpu().numpy(), y)


def neighbor_purity(
    embeddings: ArrayLike,
    labels: ArrayLike | Sequence[int],
    k: int = 20,
    backend: str = "auto",
) -> float:
    """Mean share of each item's k nearest neighbours that carry the item's label.

    Neighbours are by cosine similarity (the embeddings are L2-normalised first), leave-one-out:
    an item is never its own neighbour. Ties are broken as
    :func:`lightly_grpo.index.search.knn_search` does (lowest index first, on every backend).
    About ``sum_c p_c^2`` (``1/C`` for C balanced classes) for embeddings unrelated to the labels,
    1 when every item's k neighbours share its class.

    Args:
        embeddings: (N, D) float tensor or NumPy array.
        labels: (N,) non-negative integer labels.
        k: Neighbours per item, ``1 <= k < N``.
        backend: Search backend (``"auto"``, ``"faiss"``, ``"faiss-gpu"``, ``"tiled"`` or
            ``"torch"``).

    Returns:
        Purity in [0, 1].

    Raises:
        ValueError: On non-2-D, empty or non-finite embeddings, bad labels, a length mismatch,
            or ``k`` outside ``[1, N - 1]``.

    Examples:
        >>> x = torch.cat([torch.randn(30, 8) * 0.05 + 1.0, torch.randn(30, 8) * 0.05 - 1.0])
        >>> neighbor_purity(x, torch.arange(60) // 30, k=10)
        1.0
    """
    x, y = _check_embeddings_and_labels(embeddings, labels)
    n = x.shape[0]
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"k must be an integer, got {k!r}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got k={k}")
    if k >= n:
        raise ValueError(
            f"k must be smaller than the number of items N (an item is not its own neighbour), "
            f"got k={k} with N={n}"
        )
    xn = F.normalize(x, dim=1)
    _, indices = knn_search(xn, xn, k, exclude_self=True, backend=backend)
    y_t = torch.from_numpy(y).to(indices.device)
    same = y_t[indices] == y_t[:, None]
    return float(same.double().mean())
