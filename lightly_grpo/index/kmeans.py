"""Spherical (cosine) k-means with k-means++ seeding.

Lloyd's iterations run in ``faiss.Kmeans(spherical=True)`` whenever FAISS is importable (on the
GPU when the data is on CUDA and FAISS has one); the chunked torch loop below is only the
fallback for machines without FAISS. Both start from the same seeded k-means++ centroids, and
the final assignment always runs on :func:`lightly_grpo.index.search.knn_search`, so ties between
centroids resolve the same way on every backend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

import lightly_grpo.index.search as search
from lightly_grpo.index.search import (
    ArrayLike,
    as_finite_float_tensor,
    knn_search,
    resolve_backend,
)


def _kmeans_plus_plus(x: Tensor, num_clusters: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding on unit vectors (cosine distance), O(N K D) without an N x K matrix."""
    n = len(x)
    first = int(torch.randint(n, (1,), generator=generator))
    centroids = [x[first]]
    min_dist = (1.0 - x @ x[first]).clamp_min_(0.0)
    for _ in range(1, num_clusters):
        weights = min_dist.double().cpu()
        if float(weights.sum()) <= 0.0:  # Fewer distinct points than clusters.
            weights = torch.ones(n, dtype=torch.float64)
        choice = int(torch.multinomial(weights, 1, generator=generator))
        centroids.append(x[choice])
        min_dist = torch.minimum(min_dist, (1.0 - x @ x[choice]).clamp_min_(0.0))
    return torch.stack(centroids)


def _lloyd_faiss(xn: Tensor, centroids: Tensor, iterations: int, seed: int, gpu: bool) -> Tensor:
    """Lloyd's iterations in ``faiss.Kmeans(spherical=True)`` from the given centroids."""
    km = search.faiss.Kmeans(
        xn.shape[1],
        len(centroids),
        niter=iterations,
        seed=seed,
        spherical=True,
        gpu=gpu,
        min_points_per_centroid=1,  # Small sets are fine; silences FAISS's warning.
        max_points_per_centroid=max(256, len(xn)),  # Train on every point.
    )
    km.train(xn.cpu().numpy(), init_centroids=centroids.cpu().numpy())
    return F.normalize(torch.from_numpy(km.centroids).to(xn.device), dim=1)


def _lloyd_torch(xn: Tensor, centroids: Tensor, iterations: int) -> Tensor:
    """Lloyd's iterations in torch (no FAISS): chunked assignment, empty clusters re-seeded with
    the points farthest from their centroid."""
    num_clusters = len(centroids)
    for _ in range(iterations):
        sims, assign = knn_search(xn, centroids, 1, backend="torch")
        sums = torch.zeros_like(centroids).index_add_(0, assign[:, 0], xn)
        counts = torch.bincount(assign[:, 0], minlength=num_clusters)
        empty = (counts == 0).nonzero().flatten()
        if len(empty) > 0:
            farthest = sims[:, 0].argsort()[: len(empty)]
            sums[empty] = xn[farthest]
        centroids = F.normalize(sums, dim=1)
    return centroids


def spherical_kmeans(
    x: ArrayLike,
    num_clusters: int,
    *,
    iterations: int = 20,
    seed: int = 0,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Spherical k-means (cosine) with k-means++ seeding.

    The points are L2-normalised first. Both implementations start from the same k-means++
    seeds (seeded by ``seed``); ``faiss.Kmeans(spherical=True)`` runs Lloyd's iterations
    wherever FAISS is installed, a chunked torch loop (empty clusters re-seeded with the points
    farthest from their centroid) only where it is not.

    Args:
        x: (N, D) float tensor or numpy array.
        num_clusters: Number of clusters K, ``1 <= K <= N``.
        iterations: Number of Lloyd iterations.
        seed: Seed of the k-means++ initialisation (and of FAISS's own sampling).
        backend: Search backend of the final assignment (``"auto"``, ``"faiss"``,
            ``"faiss-gpu"``, ``"tiled"`` or ``"torch"``); FAISS's k-means runs on the GPU when
            this resolves to ``"faiss-gpu"``.

    Returns:
        ``(centroids, assignments)``: unit-norm (K, D) float32 centroids and (N,) int64 cluster
        indices, on the device of ``x``.

    Raises:
        ValueError: On empty, zero-dimensional or non-finite input (or float64 values beyond
            float32), K out of range, or a bad iterations or seed.

    Examples:
        >>> x = torch.randn(500, 16)
        >>> centroids, assignments = spherical_kmeans(x, 5)
        >>> centroids.shape, assignments.shape
        (torch.Size([5, 16]), torch.Size([500]))
    """
    t = as_finite_float_tensor(x, "x")
    if len(t) == 0:
        raise ValueError(f"x must hold at least one point, got shape {tuple(t.shape)}")
    if t.shape[1] == 0:
        # FAISS's k-means divides by the dimension: a SIGFPE that kills the process.
        raise ValueError(f"x must have dimension >= 1, got shape {tuple(t.shape)}")
    if isinstance(num_clusters, bool) or not isinstance(num_clusters, int):
        raise ValueError(f"num_clusters must be an integer, got {num_clusters!r}")
    if not 1 <= num_clusters <= len(t):
        raise ValueError(
            f"num_clusters must be in [1, {len(t)}] (number of points), got {num_clusters}"
        )
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}")
    # FAISS stores the seed in a C int; torch takes any 64-bit seed.
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise ValueError(f"seed must be an integer in [0, 2**31), got {seed!r}")
    resolved = resolve_backend(backend, t.device)
    xn = F.normalize(t, dim=1)
    generator = torch.Generator().manual_seed(seed)
    centroids = _kmeans_plus_plus(xn, num_clusters, generator)
    if iterations > 0:
        if search.faiss is not None:
            centroids = _lloyd_faiss(xn, centroids, iterations, seed, resolved == "faiss-gpu")
        else:
            centroids = _lloyd_torch(xn, centroids, iterations)
    _, assign = knn_search(xn, centroids, 1, backend=backend)
    return centroids, assign[:, 0]
