"""FAISS indexes on one or several GPUs, and a search that returns torch tensors.

:func:`faiss_gpu_index` puts an exact flat index over the references (or any CPU FAISS index,
e.g. an IVF index from :func:`benchlib.approximate.build_ivf_index`) on the GPUs
FAISS sees: ``"single"`` (one GPU), ``"replicate"`` (a full copy per GPU, queries split between
them: more throughput) or ``"shard"`` (the references split between the GPUs, every query sent to
each: more memory). It uses FAISS's ``index_cpu_to_all_gpus`` / ``index_cpu_to_gpus_list`` with
``GpuMultipleClonerOptions``, and raises :class:`FaissGpuUnavailableError` (a ``ValueError``, as
``resolve_backend("faiss-gpu")`` does) where FAISS has no GPU, before any GPU function is called:
FAISS GPU calls abort the process on a machine without a usable GPU.

:func:`search_faiss_index` searches any FAISS index (CPU or GPU) and returns ``(values,
indices)`` in :func:`lightly_grpo.index.knn_search`'s convention.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from lightly_grpo.index.search import (
    FAISS_GPU_MAX_K,
    ArrayLike,
    Metric,
    as_float_tensor,
    faiss,
    faiss_num_gpus,
)
from lightly_grpo.validation import check_finite

GpuMode = Literal["replicate", "shard", "single"]
GPU_MODES = ("replicate", "shard", "single")


class FaissGpuUnavailableError(ValueError):
    """FAISS is missing, is a CPU-only build, or sees fewer GPUs than requested."""


def _check_gpus(devices: Sequence[int] | None, mode: str) -> list[int]:
    """The GPU ids to use; raises before any FAISS GPU function can abort the process."""
    if faiss is None:
        raise FaissGpuUnavailableError(
            "faiss_gpu_index needs FAISS with GPU support, but FAISS is not installed; install "
            "the 'faiss-gpu' extra"
        )
    num_gpus = faiss_num_gpus()
    if num_gpus == 0:
        raise FaissGpuUnavailableError(
            "faiss_gpu_index needs a FAISS GPU build and a visible GPU, but "
            f"faiss.get_num_gpus() is 0 (faiss {getattr(faiss, '__version__', '?')}; a "
            "faiss-cpu build, or no CUDA device); use knn_search(backend='faiss' or 'torch')"
        )
    if devices is None:
        return [0] if mode == "single" else list(range(num_gpus))
    ids = list(devices)
    if not ids or any(isinstance(d, bool) or not isinstance(d, int) for d in ids):
        raise ValueError(f"devices must be a non-empty sequence of GPU ids, got {devices!r}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"devices must not repeat a GPU, got {ids}")
    bad = [d for d in ids if d < 0 or d >= num_gpus]
    if bad:
        raise FaissGpuUnavailableError(
            f"devices {bad} are not among the {num_gpus} GPU(s) FAISS sees (ids 0..{num_gpus - 1})"
        )
    if mode == "single" and len(ids) != 1:
        raise ValueError(f"mode='single' takes exactly one device, got devices={ids}")
    return ids


def faiss_gpu_index(
    references: ArrayLike | Any,
    *,
    mode: GpuMode = "replicate",
    devices: Sequence[int] | None = None,
    metric: Metric = "ip",
    use_float16: bool = False,
) -> Any:
    """A FAISS GPU index over ``references``, on one GPU or spread over several.

    Args:
        references: (N, D) float tensor or numpy array (an exact ``IndexFlatIP``/``IndexFlatL2``
            is built over it), or a CPU FAISS index to clone onto the GPUs.
        mode: ``"replicate"`` (a copy per GPU, queries split), ``"shard"`` (references split,
            results merged) or ``"single"`` (one GPU).
        devices: GPU ids; ``None`` means all GPUs FAISS sees (GPU 0 for ``"single"``).
        metric: ``"ip"`` or ``"l2"``, for an index built from an array (ignored for an index).
        use_float16: Store vectors in float16 on the GPU (half the memory, approximate scores).

    Returns:
        The FAISS GPU index (``GpuIndex*``, ``IndexReplicas`` or ``IndexShards``).

    Raises:
        FaissGpuUnavailableError: If FAISS is missing or sees no GPU (or not ``devices``).
        ValueError: On an unknown mode or metric, bad devices or bad references.

    Examples:
        >>> x = torch.nn.functional.normalize(torch.randn(1000, 16), dim=1)
        >>> index = faiss_gpu_index(x, mode="shard")  # doctest: +SKIP
        >>> search_faiss_index(index, x[:5], k=3)[1][:, 0].tolist()  # doctest: +SKIP
        [0, 1, 2, 3, 4]
    """
    if mode not in GPU_MODES:
        raise ValueError(f"mode must be one of {GPU_MODES}, got {mode!r}")
    if metric not in ("ip", "l2"):
        raise ValueError(f"metric must be 'ip' or 'l2', got {metric!r}")
    gpus = _check_gpus(devices, mode)
    if isinstance(references, (Tensor, np.ndarray)):
        r = as_float_tensor(references, "references")
        if r.shape[0] == 0:
            raise ValueError(f"empty reference set: references has shape {tuple(r.shape)}")
        check_finite({"references": r})
        cpu_index = (
            faiss.IndexFlatIP(r.shape[1]) if metric == "ip" else faiss.IndexFlatL2(r.shape[1])
        )
        cpu_index.add(r.cpu().numpy())
    elif isinstance(references, faiss.Index):
        cpu_index = references
    else:
        raise ValueError(
            "references must be a torch.Tensor, numpy array or CPU faiss.Index, got "
            f"{type(references).__name__}"
        )
    if mode == "single":
        options = faiss.GpuClonerOptions()
        options.useFloat16 = use_float16
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, gpus[0], cpu_index, options)
        # The GPU index must not outlive its resources object.
        index.referenced_objects = [resources]
        return index
    options = faiss.GpuMultipleClonerOptions()
    options.shard = mode == "shard"
    options.useFloat16 = use_float16
    if devices is None:
        return faiss.index_cpu_to_all_gpus(cpu_index, co=options)
    return faiss.index_cpu_to_gpus_list(cpu_index, co=options, gpus=gpus)


def _is_gpu_index(index: Any) -> bool:
    """Whether ``index`` (or a replica/shard container of GPU indexes) lives on a GPU."""
    gpu_cls = getattr(faiss, "GpuIndex", None)
    if gpu_cls is not None and isinstance(index, gpu_cls):
        return True
    for container in ("IndexReplicas", "IndexShards"):
        cls = getattr(faiss, container, None)
        if cls is not None and isinstance(index, cls) and index.count() > 0:
            return _is_gpu_index(faiss.downcast_index(index.at(0)))
    return False


def sort_results(values: Tensor, indices: Tensor, descending: bool) -> tuple[Tensor, Tensor]:
    """Sorts each row best first, equal values by ascending index (knn_search's order).

    Missing results (index ``-1``, value ``-inf`` for similarities, ``inf`` for distances) sort
    last.

    Examples:
        >>> v, i = sort_results(torch.tensor([[0.5, 0.9, 0.5]]), torch.tensor([[7, 2, 3]]), True)
        >>> i.tolist()
        [[2, 3, 7]]
    """
    # Two stable sorts: by index first, then by value, so ties keep ascending indices; missing
    # entries (-1) go behind every real index.
    key = torch.where(indices < 0, torch.iinfo(torch.int64).max, indices)
    order = key.argsort(dim=1, stable=True)
    values, indices = values.gather(1, order), indices.gather(1, order)
    order = values.argsort(dim=1, descending=descending, stable=True)
    return values.gather(1, order), indices.gather(1, order)


def search_faiss_index(
    index: Any, queries: ArrayLike, k: int, *, params: Any = None
) -> tuple[Tensor, Tensor]:
    """Searches a FAISS index (CPU or GPU) and returns torch tensors like ``knn_search``.

    Args:
        index: Any FAISS index (flat, IVF, GPU, replicas, shards).
        queries: (Q, D) float tensor or numpy array; results come back on its device.
        k: Results per query, ``1 <= k <= index.ntotal`` (``<= 2048`` on a GPU).
        params: Optional ``faiss.SearchParameters`` (e.g. ``SearchParametersIVF(nprobe=...)``).

    Returns:
        ``(values, indices)`` of shape (Q, k), float32 and int64, best first (similarities
        descending for inner-product indexes, squared distances ascending for L2), ties by
        ascending index. Where an approximate index finds fewer than k candidates, the missing
        entries are index ``-1`` with value ``-inf`` (inner product) or ``inf`` (L2).

    Raises:
        ValueError: On a dimension mismatch, empty or non-finite queries, or k out of range.

    Examples:
        >>> import faiss
        >>> x = torch.nn.functional.normalize(torch.randn(100, 8), dim=1)
        >>> flat = faiss.IndexFlatIP(8)
        >>> flat.add(x.numpy())
        >>> search_faiss_index(flat, x[:4], 2)[1][:, 0].tolist()
        [0, 1, 2, 3]
    """
    if faiss is None:
        raise ValueError("search_faiss_index needs FAISS, which is not installed")
    q = as_float_tensor(queries, "queries")
    if q.shape[0] == 0:
        raise ValueError(f"empty query set: queries has shape {tuple(q.shape)}")
    if q.shape[1] != index.d:
        raise ValueError(
            f"queries have dimension {q.shape[1]} but the index has dimension {index.d} "
            f"(queries shape {tuple(q.shape)})"
        )
    ntotal = int(index.ntotal)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k > ntotal:
        raise ValueError(f"k must be an integer in [1, {ntotal}] (vectors in the index), got {k!r}")
    if k > FAISS_GPU_MAX_K and _is_gpu_index(index):
        raise ValueError(f"FAISS GPU indexes return at most {FAISS_GPU_MAX_K} results, got k={k}")
    check_finite({"queries": q})
    # faiss.contrib.torch_utils (imported by the "faiss-gpu" backend) replaces `search` with a
    # version without `params`; the numpy original stays as `search_numpy`.
    search = getattr(index, "search_numpy", index.search)
    q_np = q.cpu().numpy()
    d, i = search(q_np, k) if params is None else search(q_np, k, params=params)
    values, indices = torch.from_numpy(d), torch.from_numpy(i).long()
    descending = index.metric_type == faiss.METRIC_INNER_PRODUCT
    missing = indices < 0
    if bool(missing.any()):
        # FAISS marks missing results with -1 and +-FLT_MAX (or +-inf): make the value +-inf.
        values = values.masked_fill(missing, -torch.inf if descending else torch.inf)
    values, indices = sort_results(values, indices, descending)
    return values.to(q.device), indices.to(q.device)
