"""Approximate k-nearest-neighbour search with a FAISS inverted-file index, and its recall.

:func:`build_ivf_index` clusters the L2-normalised references into ``nlist`` cells (spherical
k-means, FAISS's ``IndexIVFFlat`` with inner product); :func:`ivf_knn_search` scans the
``nprobe`` cells closest to each query, so its cost is about ``nprobe / nlist`` of an exact
search, and it finds the exact neighbours only when they lie in those cells.
:func:`recall_at_k` measures how many of the exact neighbours (from
:func:`lightly_grpo.index.knn_search`) it found: ``nprobe = nlist`` scans every cell and is exact.

Scores are cosine similarities (queries and references are normalised), best first, ties by
ascending index, as in ``knn_search``. The index is built and searched on the CPU; where FAISS
has GPUs it can be moved there with ``gpu_mode`` (see :mod:`benchlib.multi_gpu`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from benchlib.multi_gpu import GpuMode, faiss_gpu_index, search_faiss_index
from lightly_grpo.index.search import ArrayLike, as_float_tensor, faiss
from lightly_grpo.validation import check_finite, check_int


@dataclass(frozen=True)
class IVFIndex:
    """A trained and filled FAISS IVF-Flat index over normalised references.

    Attributes:
        index: The FAISS index (``IndexIVFFlat``, or its GPU clone).
        nlist: Number of cells (k-means centroids).
        dim: Embedding dimension.
        size: Number of references in the index.
        gpu_mode: ``None`` on the CPU, else the :func:`faiss_gpu_index` mode it was moved with.
    """

    index: Any
    nlist: int
    dim: int
    size: int
    gpu_mode: GpuMode | None = None


def _normalised(x: ArrayLike, name: str) -> Tensor:
    t = as_float_tensor(x, name)
    if t.shape[0] == 0:
        raise ValueError(f"empty {name}: shape {tuple(t.shape)}")
    check_finite({name: t})
    if bool((t.norm(dim=1) == 0).any()):
        # A zero vector has no direction; normalising would leave it at zero silently.
        row = int((t.norm(dim=1) == 0).nonzero()[0])
        raise ValueError(f"{name} has an all-zero row (row {row} of shape {tuple(t.shape)})")
    return F.normalize(t, dim=1).cpu().contiguous()


def build_ivf_index(
    references: ArrayLike,
    nlist: int,
    *,
    seed: int = 0,
    train_size: int | None = None,
    gpu_mode: GpuMode | None = None,
    devices: Sequence[int] | None = None,
) -> IVFIndex:
    """Trains an IVF-Flat inner-product index on the normalised references and adds them.

    Args:
        references: (N, D) float tensor or numpy array (normalised here).
        nlist: Number of cells, ``1 <= nlist <= train_size``. About ``sqrt(N)`` to ``16 sqrt(N)``
            is usual; FAISS warns when there are fewer than 39 training points per cell.
        seed: Seed of the k-means initialisation and of the training subsample.
        train_size: References used to train the k-means (a random subset); ``None``: all (FAISS
            itself subsamples to 256 points per cell).
        gpu_mode: ``None`` keeps the index on the CPU; ``"single"``, ``"replicate"`` or
            ``"shard"`` moves it to FAISS's GPUs (raises where there are none).
        devices: GPU ids for ``gpu_mode`` (default: all).

    Returns:
        The :class:`IVFIndex`.

    Raises:
        ValueError: On empty or non-finite references, or nlist / train_size out of range.

    Examples:
        >>> x = torch.randn(2000, 16)
        >>> ivf = build_ivf_index(x, nlist=16)
        >>> ivf.nlist, ivf.size, ivf.dim
        (16, 2000, 16)
    """
    if faiss is None:
        raise ValueError("build_ivf_index needs FAISS; install the 'faiss-cpu' extra")
    r = _normalised(references, "references")
    n, dim = r.shape
    if train_size is None:
        train_size = n
    check_int("train_size", train_size, 1, n, f"at most the {n} references")
    check_int("nlist", nlist, 1, train_size, f"at most the {train_size} training references")
    train = r
    if train_size < n:
        generator = torch.Generator().manual_seed(seed)
        train = r[torch.randperm(n, generator=generator)[:train_size]]
    index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    # Spherical k-means: the centroids are renormalised, so the cells partition directions,
    # which is what an inner-product search on unit vectors compares.
    index.cp.spherical = True
    index.cp.seed = seed
    index.train(train.numpy())
    index.add(r.numpy())
    if gpu_mode is not None:
        index = faiss_gpu_index(index, mode=gpu_mode, devices=devices)
    return IVFIndex(index=index, nlist=nlist, dim=dim, size=n, gpu_mode=gpu_mode)


def _set_nprobe(ivf: IVFIndex, nprobe: int) -> Any:
    """Search parameters for the CPU index; GPU indexes take nprobe as a setting."""
    if ivf.gpu_mode is None:
        return faiss.SearchParametersIVF(nprobe=nprobe)
    # GpuParameterSpace reaches into IndexReplicas / IndexShards as well.
    faiss.GpuParameterSpace().set_index_parameter(ivf.index, "nprobe", nprobe)
    return None


def ivf_knn_search(
    queries: ArrayLike, index: IVFIndex, k: int, nprobe: int
) -> tuple[Tensor, Tensor]:
    """Approximate k-nearest-neighbour search, scanning the ``nprobe`` closest cells.

    Args:
        queries: (Q, D) float tensor or numpy array (normalised here).
        index: From :func:`build_ivf_index`.
        k: Neighbours per query, ``1 <= k <= N``.
        nprobe: Cells scanned per query, ``1 <= nprobe <= nlist``; ``nlist`` is exact.

    Returns:
        ``(values, indices)`` of shape (Q, k) on the queries' device: cosine similarities
        (float32) and int64 reference indices, best first, ties by ascending index. When the
        scanned cells hold fewer than k references, the missing entries are index ``-1`` with
        similarity ``-inf`` (never NaN); :func:`recall_at_k` counts them as misses.

    Raises:
        ValueError: On a dimension mismatch, empty or non-finite queries, k or nprobe out of
            range.

    Examples:
        >>> x = torch.nn.functional.normalize(torch.randn(2000, 16), dim=1)
        >>> ivf = build_ivf_index(x, nlist=16)
        >>> sims, idx = ivf_knn_search(x[:5], ivf, k=3, nprobe=4)
        >>> idx[:, 0].tolist()
        [0, 1, 2, 3, 4]
    """
    if not isinstance(index, IVFIndex):
        raise ValueError(f"index must be an IVFIndex from build_ivf_index, got {type(index)}")
    q = as_float_tensor(queries, "queries")
    if q.shape[0] > 0 and q.shape[1] != index.dim:
        raise ValueError(
            f"queries have dimension {q.shape[1]} but the index has dimension {index.dim} "
            f"(queries shape {tuple(q.shape)})"
        )
    check_int("k", k, 1, index.size, f"at most the {index.size} references in the index")
    check_int("nprobe", nprobe, 1, index.nlist, f"at most nlist={index.nlist} cells")
    qn = _normalised(q, "queries")
    values, indices = search_faiss_index(index.index, qn, k, params=_set_nprobe(index, nprobe))
    return values.to(q.device), indices.to(q.device)


def recall_at_k(approx_indices: Tensor, exact_indices: Tensor, *, chunk_size: int = 4096) -> float:
    """Fraction of the exact k nearest neighbours that the approximate search returned.

    Both results have shape (Q, k): the mean over queries of
    ``|approx_row & exact_row| / k`` (missing approximate results, ``-1``, count as misses).
    With ties at the k-th place the exact set is one of several valid ones, so a perfect
    search can score just below 1.

    Args:
        approx_indices: (Q, k) int indices from an approximate search.
        exact_indices: (Q, k) int indices of the exact neighbours (e.g. ``knn_search``).
        chunk_size: Queries compared at once (bounds the Q x k x k comparison).

    Returns:
        Recall in [0, 1].

    Raises:
        ValueError: On differing or non-2-D shapes, empty results, non-integer indices or
            negative exact indices.

    Examples:
        >>> recall_at_k(torch.tensor([[0, 1], [2, 5]]), torch.tensor([[1, 0], [2, 3]]))
        0.75
    """
    for name, t in (("approx_indices", approx_indices), ("exact_indices", exact_indices)):
        if not isinstance(t, Tensor) or t.ndim != 2 or t.is_floating_point() or t.is_complex():
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a 2-D integer tensor (queries, k), got {shape}")
        if t.numel() == 0:
            raise ValueError(f"{name} is empty: shape {tuple(t.shape)}")
    if approx_indices.shape != exact_indices.shape:
        raise ValueError(
            "approx_indices and exact_indices must have the same shape (queries, k), got "
            f"{tuple(approx_indices.shape)} vs {tuple(exact_indices.shape)}"
        )
    if bool((exact_indices < 0).any()):
        raise ValueError("exact_indices contains negative (missing) indices; use exact results")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    approx = approx_indices.to(exact_indices.device).long()
    exact = exact_indices.long()
    hits = 0
    for start in range(0, len(exact), chunk_size):
        e = exact[start : start + chunk_size]
        a = approx[start : start + chunk_size]
        # Each exact neighbour counts once, however often the approximate row repeats it.
        hits += int((e[:, :, None] == a[:, None, :]).any(dim=2).sum())
    return hits / exact.numel()
