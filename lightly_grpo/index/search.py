"""Exact k-nearest-neighbour search over embeddings, with the backend chosen at run time.

The search layer that the evaluation, the k-means and the benchmarks share. Backends:

- ``"faiss-gpu"``: FAISS on a GPU, used when FAISS is importable, ``faiss.get_num_gpus() > 0``
  and the data lives on CUDA. FAISS GPU search is limited to ``k <= 2048``; a larger ``k`` runs
  the chunked torch search on the same device instead (never a crash: ``faiss.knn_gpu`` aborts
  the process on a machine without a usable GPU, so GPU functions are only called after
  ``get_num_gpus()`` said there is one).
- ``"tiled"``: CPU search in cache-sized tiles with this package's compiled streaming top-k
  (:mod:`lightly_grpo.index.tiled`); leave-one-out searches compute each dot product once.
  The default on the CPU when the extension was built (it is, wherever a C++ compiler was
  present at install time). Without it ``"auto"`` warns once per process (a ``UserWarning``)
  and uses FAISS or torch; ``lightly-grpo info`` shows which backend ``"auto"`` picks.
- ``"faiss"``: FAISS on the CPU (``faiss-cpu`` or the CPU indexes of ``faiss-gpu``).
- ``"torch"``: exact chunked ``mm`` + ``topk`` on the data's device; used when neither of the
  above is available, on CUDA without FAISS, or when asked for.

All backends are exact and memory-bounded: queries are processed in chunks, so Q queries against
N references never materialise a Q x N matrix (FAISS blocks its own search internally; the torch
path holds one ``chunk x N`` block, the tiled path one tile and a candidate buffer per query).
Results are sorted best first. Among equal scores the lowest reference indices are kept and
listed in ascending order, on every backend: this is what FAISS's L2 search (and so
pytorch-metric-learning's default ``FaissKNN``) returns, which makes leave-one-out metrics on
duplicated embeddings reproducible across backends.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Iterator
from types import FrameType
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from lightly_grpo.index.tiled import (
    candidate_capacity,
    kernel_import_error,
    tiled_available,
    tiled_knn_chunks,
)
from lightly_grpo.validation import check_finite

faiss: Any
try:  # faiss-cpu and faiss-gpu are two extras of this package; either one imports as `faiss`.
    import faiss
except ImportError:  # pragma: no cover - exercised only where FAISS is not installed
    faiss = None

Metric = Literal["ip", "l2"]
ArrayLike = Tensor | np.ndarray

BACKENDS = ("auto", "faiss", "faiss-gpu", "tiled", "torch")
FAISS_GPU_MAX_K = 2048
# Working memory one search chunk may use (similarity block, results, caller's per-chunk work).
DEFAULT_MEMORY_BUDGET_BYTES = 256 * 2**20
_MAX_CHUNK_SIZE = 8192
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
# Scores (dot products, and the norms and differences of the l2 path) are bounded by
# dim * (max|q| + max|r|)^2; inputs whose bound exceeds this could overflow float32.
_MAX_SCORE_BOUND = FLOAT32_MAX / 4

_gpu_resources: Any = None
# Whether this process has warned that "auto" could not use the missing compiled kernel.
_missing_kernel_warned = False
# How to get the kernel: the build skips it silently without a compiler, and pip may reuse a
# cached wheel built without it, hence --no-cache-dir.
KERNEL_INSTALL_HINT = (
    "install a C++ compiler (e.g. g++ or clang++) and rebuild lightly-grpo: "
    "`pip install --force-reinstall --no-deps --no-cache-dir --no-binary lightly-grpo "
    "lightly-grpo`, or in a source checkout `pip install --force-reinstall --no-deps "
    "--no-cache-dir .` (`-e .` for an editable install); `lightly-grpo info` shows whether it "
    "is present"
)


def faiss_num_gpus() -> int:
    """Number of GPUs FAISS can use (0 without FAISS or with a CPU-only build)."""
    if faiss is None or not hasattr(faiss, "get_num_gpus"):
        return 0
    return int(faiss.get_num_gpus())


def available_backends() -> list[str]:
    """Backends usable on this machine, fastest first.

    Examples:
        >>> "torch" in available_backends()
        True
    """
    backends = []
    if faiss_num_gpus() > 0:
        backends.append("faiss-gpu")
    if tiled_available():
        backends.append("tiled")
    if faiss is not None:
        backends.append("faiss")
    backends.append("torch")
    return backends


def _kernel_missing_reason() -> str:
    error = kernel_import_error()
    return f" (import error: {error})" if error else ""


# lightly_grpo/, spelled as the code objects of this package spell their file names.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _stacklevel_outside_package() -> int:
    """The ``stacklevel`` that points a warning raised by our caller at the first frame outside
    this package (the user's call, whichever of our functions it went through)."""
    # warnings.warn's stacklevel 1 is its caller (our caller), 2 the caller's caller: frame 2 here.
    level = 2
    frame: FrameType | None = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        level, frame = level + 1, frame.f_back
    return level


def _warn_missing_kernel(used: str) -> None:
    """Warns, once per process, that ``"auto"`` runs ``used`` because the kernel is missing."""
    global _missing_kernel_warned
    if _missing_kernel_warned:
        return
    _missing_kernel_warned = True
    warnings.warn(
        "the compiled extension lightly_grpo._tiled_topk (the kernel of the fast 'tiled' CPU "
        f"search backend) is missing{_kernel_missing_reason()}, so backend='auto' uses "
        f"{used!r} for CPU searches instead, which gives the same results more slowly (usually "
        f"the package was installed without a C++ compiler). To get the kernel, "
        f"{KERNEL_INSTALL_HINT}. (Shown once per process.)",
        UserWarning,
        stacklevel=_stacklevel_outside_package(),
    )


def resolve_backend(
    backend: str = "auto", device: torch.device | str | None = None, *, warn: bool = True
) -> str:
    """Turns a backend request into the backend that will run.

    Args:
        backend: ``"auto"``, ``"faiss"``, ``"faiss-gpu"``, ``"tiled"`` or ``"torch"``.
        device: Device of the data. FAISS runs on the GPU only for CUDA data; ``"tiled"``
            only on the CPU.
        warn: Whether ``"auto"`` on the CPU warns (a ``UserWarning``, once per process) when
            the compiled ``"tiled"`` kernel is missing and it falls back to FAISS or torch. The
            choice is the same either way.

    Returns:
        ``"faiss-gpu"``, ``"faiss"``, ``"tiled"`` or ``"torch"``.

    Raises:
        ValueError: If the backend is unknown or not available here.

    Examples:
        >>> resolve_backend("torch")
        'torch'
        >>> resolve_backend("auto", "cuda", warn=False) in ("faiss-gpu", "faiss", "torch")
        True
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    on_cuda = device is not None and torch.device(device).type == "cuda"
    if backend == "torch":
        return "torch"
    if backend == "tiled" or (backend == "auto" and not on_cuda and tiled_available()):
        if not tiled_available():
            raise ValueError(
                "backend='tiled' needs the compiled extension lightly_grpo._tiled_topk, which "
                f"is missing{_kernel_missing_reason()} (usually the package was installed "
                "without a C++ compiler); use backend='auto', 'faiss' or 'torch', or "
                f"{KERNEL_INSTALL_HINT}"
            )
        if on_cuda:
            raise ValueError(f"backend='tiled' runs on the CPU, got data on {device}")
        return "tiled"
    resolved = _resolve_faiss_or_torch(backend, device, on_cuda)
    if backend == "auto" and not on_cuda and warn:
        _warn_missing_kernel(resolved)  # "auto" on the CPU gets here only without the kernel
    return resolved


def _resolve_faiss_or_torch(backend: str, device: torch.device | str | None, on_cuda: bool) -> str:
    """:func:`resolve_backend` for ``"auto"`` (when the tiled search is out), ``"faiss"`` and
    ``"faiss-gpu"``."""
    if faiss is None:
        if backend == "auto":
            return "torch"
        raise ValueError(
            f"backend={backend!r} needs FAISS, which is not installed; install the "
            "'faiss-cpu' or 'faiss-gpu' extra or use backend='torch'"
        )
    gpu_ok = on_cuda and faiss_num_gpus() > 0
    if backend == "faiss-gpu":
        if not gpu_ok:
            raise ValueError(
                "backend='faiss-gpu' needs CUDA data and a FAISS GPU build with a GPU "
                f"(device={device}, faiss.get_num_gpus()={faiss_num_gpus()})"
            )
        return "faiss-gpu"
    return "faiss-gpu" if gpu_ok else "faiss"


def as_float_tensor(x: ArrayLike, name: str) -> Tensor:
    """A detached, contiguous float32 (items, dim) tensor from a tensor or numpy array.

    Examples:
        >>> as_float_tensor(np.ones((2, 3), dtype=np.float16), "x").dtype
        torch.float32
    """
    if isinstance(x, np.ndarray):
        try:
            t = torch.as_tensor(x)
        except TypeError as error:  # object or string arrays
            raise ValueError(f"{name} must hold numbers, got dtype {x.dtype}: {error}") from None
    else:
        t = x
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (items, dim), got shape {tuple(t.shape)}")
    if t.is_complex():
        raise ValueError(f"{name} must be real, got dtype {t.dtype}")
    if not t.is_floating_point():
        t = t.float()
    return t.detach().to(torch.float32).contiguous()


def _raise_not_finite(named: dict[str, tuple[ArrayLike, Tensor]]) -> None:
    """Explains non-finite float32 copies: NaN/inf in the input, or a float32 overflow of the
    cast (float64 values beyond 3.4e38)."""
    check_finite({name: torch.as_tensor(original) for name, (original, _) in named.items()})
    for name, (original, cast) in named.items():
        if not bool(torch.isfinite(cast).all()):
            largest = float(torch.as_tensor(original).abs().max())
            raise ValueError(
                f"{name} has values beyond float32's range (largest |value| {largest:.3g}, "
                f"float32 holds up to {FLOAT32_MAX:.3g}); the search runs in float32, so "
                "normalise or rescale them"
            )


def as_finite_float_tensor(x: ArrayLike, name: str) -> Tensor:
    """:func:`as_float_tensor` and a ValueError when the float32 copy holds NaN or inf.

    The message tells NaN/inf in ``x`` from float64 values that overflow float32. One host
    synchronisation.

    Examples:
        >>> as_finite_float_tensor(np.full((1, 2), 1e300), "x")
        Traceback (most recent call last):
        ...
        ValueError: x has values beyond float32's range (largest |value| 1e+300, ...
    """
    t = as_float_tensor(x, name)
    if t.numel() and not bool(torch.isfinite(t.sum())):
        _raise_not_finite({name: (x, t)})
    return t


def _validate(
    queries: ArrayLike, references: ArrayLike, k: int, exclude_self: bool, metric: str
) -> tuple[Tensor, Tensor]:
    if metric not in ("ip", "l2"):
        raise ValueError(f"metric must be 'ip' or 'l2', got {metric!r}")
    q = as_float_tensor(queries, "queries")
    r = as_float_tensor(references, "references")
    if q.shape[0] == 0:
        raise ValueError(f"empty query set: queries has shape {tuple(q.shape)}")
    if r.shape[0] == 0:
        raise ValueError(f"empty reference set: references has shape {tuple(r.shape)}")
    if q.shape[1] != r.shape[1]:
        raise ValueError(
            f"queries and references differ in dimension: {tuple(q.shape)} vs {tuple(r.shape)}"
        )
    if q.shape[1] == 0:
        raise ValueError(
            f"queries and references have dimension 0 (shapes {tuple(q.shape)} and "
            f"{tuple(r.shape)}): there is nothing to compare"
        )
    if q.device != r.device:
        raise ValueError(f"queries are on {q.device} but references on {r.device}")
    if exclude_self and q.shape[0] > r.shape[0]:
        raise ValueError(
            "exclude_self=True needs query i to be reference i, but there are more queries "
            f"({q.shape[0]}) than references ({r.shape[0]})"
        )
    available = r.shape[0] - int(exclude_self)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k > available:
        raise ValueError(
            f"k must be an integer in [1, {available}] (number of references "
            f"{r.shape[0]}{' minus the query itself' if exclude_self else ''}), got {k!r}"
        )
    # NaN/inf and the score bound in one pass over each tensor and one host synchronisation.
    extremes = torch.stack([*torch.aminmax(q), *torch.aminmax(r)]).tolist()
    if not all(math.isfinite(value) for value in extremes):
        _raise_not_finite({"queries": (queries, q), "references": (references, r)})
    q_max, r_max = max(-extremes[0], extremes[1]), max(-extremes[2], extremes[3])
    bound = q.shape[1] * (q_max + r_max) ** 2
    if bound > _MAX_SCORE_BOUND:
        raise ValueError(
            f"queries and references are too large for float32 scores: largest |value| "
            f"{q_max:.3g} and {r_max:.3g} in dimension {q.shape[1]} can overflow float32 "
            f"(dim * (|q| + |r|)^2 = {bound:.3g} > {_MAX_SCORE_BOUND:.3g}); normalise or "
            "rescale them"
        )
    return q, r


def auto_chunk_size(
    num_references: int,
    k: int,
    *,
    similarity_block: bool = True,
    extra_bytes_per_query: int = 0,
    memory_budget: int = DEFAULT_MEMORY_BUDGET_BYTES,
) -> int:
    """Queries per chunk so that one chunk stays within ``memory_budget`` bytes.

    Args:
        num_references: Number of reference items N.
        k: Results per query.
        similarity_block: Whether the chunk holds a ``chunk x N`` float32 block (torch path).
        extra_bytes_per_query: Caller's own per-query working memory.
        memory_budget: Bytes one chunk may use.

    Returns:
        A chunk size between 1 and 8192.

    Examples:
        >>> auto_chunk_size(1_000_000, 20) < auto_chunk_size(1_000, 20)
        True
    """
    # topk keeps a value/index copy of the results, hence more than 12 bytes per result.
    per_query = 24 * (k + 1) + extra_bytes_per_query
    if similarity_block:
        per_query += 8 * num_references
    return int(max(1, min(_MAX_CHUNK_SIZE, memory_budget // per_query)))


def _order_ties(values: Tensor, indices: Tensor, descending: bool) -> tuple[Tensor, Tensor]:
    """Orders equal values by ascending index (FAISS lists inner-product ties the other way)."""
    has_tie = (values[:, 1:] == values[:, :-1]).any(dim=1)
    if bool(has_tie.any()):
        rows = has_tie.nonzero().flatten()
        order = indices[rows].argsort(dim=1)
        v = values[rows].gather(1, order)
        i = indices[rows].gather(1, order)
        v, o = v.sort(dim=1, descending=descending, stable=True)
        values[rows], indices[rows] = v, i.gather(1, o)
    return values, indices


def _topk_sorted(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k of each row, best first; among equal scores the lowest columns, in ascending order."""
    n = scores.shape[1]
    extra = 1 if k < n else 0
    values, indices = scores.topk(k + extra, dim=1, largest=True, sorted=True)
    if extra:
        # A tie across the k-th place: topk may have kept any of the tied columns, so those
        # (rare) rows are redone with a full stable sort, which keeps the lowest columns.
        boundary = values[:, k - 1] == values[:, k]
        values, indices = values[:, :k].contiguous(), indices[:, :k].contiguous()
        if bool(boundary.any()):
            rows = boundary.nonzero().flatten()
            v, i = scores[rows].sort(dim=1, descending=True, stable=True)
            values[rows], indices[rows] = v[:, :k], i[:, :k]
    return _order_ties(values, indices, descending=True)


def _torch_chunk(
    q: Tensor, r: Tensor, r_sq_norms: Tensor | None, k: int, metric: str, self_index: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Exact search of one chunk; ``self_index[i]`` is the column to exclude for row i."""
    scores = q @ r.T
    if metric == "l2":
        if r_sq_norms is None:
            r_sq_norms = (r * r).sum(dim=1)
        # Rank by -(|r|^2 - 2 q.r); |q|^2 is constant per row and added back afterwards.
        scores.mul_(2.0).sub_(r_sq_norms)
    if self_index is not None:
        scores[torch.arange(q.shape[0], device=q.device), self_index] = -math.inf
    values, indices = _topk_sorted(scores, k)
    if metric == "l2":
        values = ((q * q).sum(dim=1, keepdim=True) - values).clamp_min_(0.0)
    return values, indices


def _faiss_metric(metric: str) -> Any:
    return faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2


def _drop_self(values: Tensor, indices: Tensor, offset: int) -> tuple[Tensor, Tensor]:
    """Removes each row's own index from a k+1 search; rows without it lose their last result.

    This is pytorch-metric-learning's convention, so leave-one-out results match it even when
    duplicates push an item out of its own top k+1.
    """
    k = indices.shape[1] - 1
    rows = torch.arange(offset, offset + len(indices), device=indices.device)
    is_self = indices == rows[:, None]
    # Position of the own index (k, i.e. "drop the last", where it is missing).
    position = torch.where(is_self.any(dim=1), is_self.int().argmax(dim=1), k)
    cols = torch.arange(k, device=indices.device)[None, :]
    take = cols + (cols >= position[:, None]).long()
    return values.gather(1, take), indices.gather(1, take)


def _faiss_cpu_chunk(q: Tensor, r_np: np.ndarray, k: int, metric: str) -> tuple[Tensor, Tensor]:
    d, i = faiss.knn(q.cpu().numpy(), r_np, k, metric=_faiss_metric(metric))
    return torch.from_numpy(d), torch.from_numpy(i)


def _faiss_gpu_chunk(q: Tensor, r: Tensor, k: int, metric: str) -> tuple[Tensor, Tensor]:
    global _gpu_resources
    import faiss.contrib.torch_utils  # noqa: F401  (lets knn_gpu take CUDA tensors)

    if _gpu_resources is None:
        _gpu_resources = faiss.StandardGpuResources()
    d, i = faiss.knn_gpu(_gpu_resources, q, r, k, metric=_faiss_metric(metric))
    return d, i.long()


def iter_knn_search(
    queries: ArrayLike,
    references: ArrayLike,
    k: int,
    *,
    metric: Metric = "ip",
    backend: str = "auto",
    chunk_size: int | None = None,
    exclude_self: bool = False,
    extra_bytes_per_query: int = 0,
    progress: bool = False,
) -> Iterator[tuple[int, Tensor, Tensor]]:
    """Chunked exact kNN search, yielding one chunk of queries at a time.

    Same arguments as :func:`knn_search`; use this to process the results of a large search
    chunk by chunk without holding all of them. ``extra_bytes_per_query`` is the caller's own
    per-query working memory, counted when the chunk size is chosen automatically; ``progress``
    shows a tqdm bar (over score tiles on the tiled backend, over chunks on the others).

    Yields:
        ``(start, values, indices)``: the results for queries ``start:start + len(values)``.

    Examples:
        >>> x = torch.nn.functional.normalize(torch.randn(100, 8), dim=1)
        >>> sum(len(v) for _, v, _ in iter_knn_search(x, x, 5, chunk_size=30))
        100
    """
    q, r = _validate(queries, references, k, exclude_self, metric)
    resolved = resolve_backend(backend, q.device)
    if resolved == "faiss-gpu" and k + int(exclude_self) > FAISS_GPU_MAX_K:
        resolved = "torch"  # FAISS GPU cannot return more than 2048 results.
    if chunk_size is None:
        chunk_size = auto_chunk_size(
            len(r),
            k,
            similarity_block=resolved == "torch",
            # The tiled backend buffers up to candidate_capacity(k) 8-byte candidates per query.
            extra_bytes_per_query=extra_bytes_per_query
            + (8 * candidate_capacity(k) if resolved == "tiled" else 0),
            # GPUs need bigger chunks to be busy; 1 GiB is small next to their memory. The tiled
            # search needs no big chunks (it streams tiles) and a leave-one-out search may hold
            # all candidate buffers besides, so its chunks get a sixteenth of the budget.
            memory_budget=DEFAULT_MEMORY_BUDGET_BYTES
            * (4 if q.device.type == "cuda" else 1)
            // (16 if resolved == "tiled" else 1),
        )
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    if resolved == "tiled":
        # Exact with the same tie order as the torch path; a leave-one-out search over all
        # items is symmetric when its candidate buffers fit the budget (index/tiled.py).
        yield from tiled_knn_chunks(
            q,
            r,
            k,
            metric=metric,
            exclude_self=exclude_self,
            chunk_size=chunk_size,
            progress=progress,
        )
        return
    r_np = r.cpu().numpy() if resolved == "faiss" else None
    r_sq = (r * r).sum(dim=1) if metric == "l2" else None
    # FAISS gets one extra result to detect a tie across the k-th place (see below).
    extra = 1 if k + int(exclude_self) < len(r) else 0
    search_k = k + int(exclude_self) + extra
    chunks = range(0, len(q), chunk_size)
    for start in tqdm(chunks, desc="kNN search", unit="chunk", disable=not progress, leave=False):
        qc = q[start : start + chunk_size]
        rows = torch.arange(start, start + len(qc), device=q.device)
        if resolved == "torch":
            values, indices = _torch_chunk(qc, r, r_sq, k, metric, rows if exclude_self else None)
        else:
            if resolved == "faiss":
                assert r_np is not None
                values, indices = _faiss_cpu_chunk(qc, r_np, search_k, metric)
            else:
                values, indices = _faiss_gpu_chunk(qc, r, search_k, metric)
            values, indices = values.to(q.device), indices.to(q.device)
            if exclude_self:
                values, indices = _drop_self(values, indices, start)
            if extra:
                # FAISS's inner-product search keeps an arbitrary subset of the items tied at
                # the k-th place; the (rare) rows with such a tie are redone exactly.
                tied = (values[:, k - 1] == values[:, k]).nonzero().flatten()
                values, indices = values[:, :k].contiguous(), indices[:, :k].contiguous()
                if len(tied) > 0:
                    self_index = rows[tied] if exclude_self else None
                    values[tied], indices[tied] = _torch_chunk(
                        qc[tied], r, r_sq, k, metric, self_index
                    )
            values, indices = _order_ties(values, indices, descending=metric == "ip")
        yield start, values, indices


def knn_search(
    queries: ArrayLike,
    references: ArrayLike,
    k: int,
    *,
    metric: Metric = "ip",
    backend: str = "auto",
    chunk_size: int | None = None,
    exclude_self: bool = False,
) -> tuple[Tensor, Tensor]:
    """Exact k-nearest-neighbour search, chunked over the queries.

    Args:
        queries: (Q, D) float tensor or numpy array.
        references: (N, D) float tensor or numpy array, same device as the queries.
        k: Number of neighbours per query, ``1 <= k <= N`` (``N - 1`` with ``exclude_self``).
        metric: ``"ip"`` (inner product, largest first; cosine on normalised inputs) or
            ``"l2"`` (squared Euclidean distance, smallest first).
        backend: ``"auto"``, ``"faiss"``, ``"faiss-gpu"``, ``"tiled"`` or ``"torch"``, see the
            module doc.
        chunk_size: Queries per chunk; ``None`` picks it from a 256 MiB working-memory budget.
        exclude_self: Leave-one-out search: query i is reference i and is dropped from its own
            results (k+1 are searched and the own index removed; a row whose own index is not
            among them, possible with duplicates, drops its last result instead).

    Returns:
        ``(values, indices)`` of shape (Q, k): similarities (``"ip"``) or squared distances
        (``"l2"``) as float32, and int64 reference indices, best first.

    Raises:
        ValueError: On empty or zero-dimensional inputs, differing dimensions, NaN/inf, values
            large enough to overflow float32 scores, or k out of range.

    Examples:
        >>> x = torch.nn.functional.normalize(torch.randn(1000, 32), dim=1)
        >>> sims, idx = knn_search(x, x, k=10, exclude_self=True)
        >>> sims.shape, idx.dtype
        (torch.Size([1000, 10]), torch.int64)
    """
    values, indices = [], []
    for _, v, i in iter_knn_search(
        queries,
        references,
        k,
        metric=metric,
        backend=backend,
        chunk_size=chunk_size,
        exclude_self=exclude_self,
    ):
        values.append(v)
        indices.append(i)
    return torch.cat(values), torch.cat(indices)
