"""Exact CPU kNN search in cache-sized tiles with a compiled streaming top-k.

This is the ``"tiled"`` backend of :mod:`lightly_grpo.index` (also importable under its old name
``lightly_grpo.tiled_search``). Scores are computed one tile at a time (``torch.mm`` into a
reused buffer of a few MiB, so the matrix product runs at full speed and nothing of size Q x N
is written to memory), and the compiled extension
``lightly_grpo._tiled_topk`` streams each tile into a per-query candidate buffer: a vector compare
against the query's current k-th best score rejects almost every score, and a full buffer is cut
back to its k best. Results are exact: candidates are ordered by score, then by reference index
(lowest first), the same total order as every other backend.

Leave-one-out search (the references are the queries) is **symmetric**: an off-diagonal tile
serves its rows and, read column-wise, the rows of its columns, so each dot product is computed
once, half of what any query-by-query search computes. That needs the candidate buffers of all N
items at once (``N x cap x 8`` bytes, ``cap`` a little above k), so it is used only when they fit
in ``symmetric_memory`` bytes; otherwise queries are processed in chunks as usual, and memory
stays bounded for any N.

Items are visited in a fixed pseudo-random order, so data sorted by class (an ImageFolder) does
not make the k-th best score climb slowly; ties are still settled by the original index.

The kernel's threads take work on demand: rows in small ranges, and the blocks of a symmetric
tile from a scheduler that never runs two blocks writing the same candidate buffers (no
barrier, no fixed shares). On a machine shared with other processes, a thread that gets only
part of a core then does less of the work instead of holding up the others, and the results do
not depend on the schedule. The tile products are ``torch.mm`` on torch's intra-op (OpenMP)
threads; ``OMP_WAIT_POLICY=PASSIVE`` in the environment (set before torch starts) makes those
sleep between products instead of spinning, which helps further on an oversubscribed machine
(``recipes/benchmarks/bench_busy_machine.py`` measures both).

The extension is built when the package is installed (it is optional: without a C++ compiler the
package installs without it and :func:`tiled_available` is False; ``"auto"`` then uses FAISS or
torch, with a ``UserWarning`` once per process, and ``lightly-grpo info`` says so).
"""

from __future__ import annotations

import importlib
import math
import mmap
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

KERNEL_MODULE = "lightly_grpo._tiled_topk"

_kernel: Any
# Why the kernel did not import (None when it did): shown by `lightly-grpo info` and the warning.
_kernel_import_error: str | None = None
try:
    _kernel = importlib.import_module(KERNEL_MODULE)
except ImportError as _error:  # pragma: no cover - exercised only where it was not built
    _kernel = None
    _kernel_import_error = f"{type(_error).__name__}: {_error}"

DEFAULT_TILE_SIZE = 2048
DEFAULT_SAMPLE_SIZE = 4096
# All-items candidate buffers of a symmetric (leave-one-out) search may use this much; above it
# the search runs chunk by chunk (twice the arithmetic, memory bounded by the chunk size).
# 2 GiB covers 100k items at 100 classes (k = max_bin_count ~ 1,100).
DEFAULT_SYMMETRIC_MEMORY_BYTES = 2 * 2**30
_INT32_MAX = 2**31 - 1


def tiled_available() -> bool:
    """Whether the compiled top-k extension was built (the ``"tiled"`` backend can run).

    Examples:
        >>> isinstance(tiled_available(), bool)
        True
    """
    return _kernel is not None


def kernel_import_error() -> str | None:
    """Why the compiled top-k extension did not import, or None (imported, or never tried).

    Examples:
        >>> kernel_import_error() is None or not tiled_available()
        True
    """
    return None if _kernel is not None else _kernel_import_error


def candidate_capacity(k: int) -> int:
    """Candidates buffered per query before a cut back to k (memory vs. number of cuts).

    Examples:
        >>> candidate_capacity(100)
        144
    """
    return k + k // 8 + 32


def symmetric_state_bytes(num_items: int, k: int) -> int:
    """Bytes of candidate buffers a symmetric search over ``num_items`` needs.

    Examples:
        >>> symmetric_state_bytes(1000, 10)
        360000
    """
    return num_items * (candidate_capacity(k) * 8 + 16)


def _prefaulted(shape: tuple[int, ...], dtype: type[np.generic]) -> np.ndarray:
    """An uninitialised array whose pages are mapped up front.

    The candidate buffers and results are written once, scattered over hundreds of MiB; on a
    virtual machine one page fault per first write costs more than the top-k selection itself,
    while one ``MAP_POPULATE`` call maps the pages in bulk.
    """
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    flags = getattr(mmap, "MAP_POPULATE", None)
    if flags is None or size < 2**24:  # Not Linux, or too small to matter.
        return np.empty(shape, dtype=dtype)
    buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | flags)
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


class _TopKState:
    """Candidate buffers, counts and thresholds of ``rows`` queries (numpy, shared with C++)."""

    def __init__(self, rows: int, k: int) -> None:
        self.rows = rows
        self.k = k
        self.cap = candidate_capacity(k)
        # One uint64 key per candidate (score and id, see _tiled_topk.cpp).
        self.entries = _prefaulted((rows * self.cap,), np.uint64)
        self.counts = np.zeros(rows, dtype=np.int32)
        self.thr_v = np.empty(rows, dtype=np.float32)
        self.thr_key = np.empty(rows, dtype=np.uint64)
        self.reset(rows)

    def reset(self, rows: int) -> None:
        """Empties the first ``rows`` queries' buffers (reusing the memory for a new chunk)."""
        self.counts[:rows] = 0
        self.thr_v[:rows] = -np.inf
        self.thr_key[:rows] = 0  # 0: every candidate gets in

    def _state(self) -> tuple[Any, ...]:
        """The leading arguments of every kernel call: buffers, counts, thresholds, sizes."""
        return (
            self.entries,
            self.counts,
            self.thr_v,
            self.thr_key,
            self.rows,
            self.cap,
            self.k,
        )

    def push(
        self,
        tile: np.ndarray,
        *,
        scale: float,
        col_bias: np.ndarray | None,
        row_bias: np.ndarray | None,
        row_ids: np.ndarray,
        col_ids: np.ndarray,
        row_state0: int,
        col_state0: int,
        skip_self: bool,
        threads: int,
    ) -> None:
        """Streams a C-contiguous (m, n) score tile into state rows ``row_state0`` on (and,
        with ``col_state0 >= 0``, column-wise into rows ``col_state0`` on)."""
        m, n = tile.shape
        _kernel.push_tile(
            *self._state(),
            tile,
            m,
            n,
            n,
            scale,
            col_bias,
            row_bias,
            row_ids,
            col_ids,
            row_state0,
            col_state0,
            skip_self,
            threads,
        )

    def set_thresholds(
        self,
        tile: np.ndarray,
        *,
        scale: float,
        col_bias: np.ndarray | None,
        row_ids: np.ndarray,
        col_ids: np.ndarray,
        row_state0: int,
        skip_self: bool,
        rank: int,
        threads: int,
    ) -> None:
        """Starts the empty rows of a sample tile at their rank-th best score."""
        m, n = tile.shape
        _kernel.set_thresholds(
            *self._state(),
            tile,
            m,
            n,
            n,
            scale,
            col_bias,
            row_ids,
            col_ids,
            row_state0,
            skip_self,
            rank,
            threads,
        )

    def finalize(
        self, state_rows: np.ndarray, threads: int, allow_short: bool = False
    ) -> tuple[Tensor, Tensor]:
        values = _prefaulted((len(state_rows), self.k), np.float32)
        ids = _prefaulted((len(state_rows), self.k), np.int64)
        short = _kernel.finalize(
            *self._state(),
            np.ascontiguousarray(state_rows, dtype=np.int32),
            len(state_rows),
            values,
            ids,
            threads,
        )
        if short and not allow_short:  # The caller redoes short rows; never return padding.
            raise RuntimeError(f"{short} queries ended with fewer than k={self.k} candidates")
        return torch.from_numpy(values), torch.from_numpy(ids)


def _visiting_order(n: int) -> Tensor:
    """A fixed pseudo-random order of the references (seeded: results never depend on it)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))


def tiled_knn_chunks(
    queries: Tensor,
    references: Tensor,
    k: int,
    *,
    metric: str = "ip",
    exclude_self: bool = False,
    chunk_size: int = 8192,
    tile_size: int = DEFAULT_TILE_SIZE,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    symmetric: bool | None = None,
    symmetric_memory: int | None = None,
    threads: int | None = None,
    progress: bool = False,
) -> Iterator[tuple[int, Tensor, Tensor]]:
    """Exact kNN search on the CPU, yielding ``(start, values, indices)`` per chunk of queries.

    Inputs are validated by :func:`lightly_grpo.index.search.iter_knn_search`, which calls this for
    ``backend="tiled"``; the arguments mean the same as there.

    Args:
        queries: (Q, D) float32 CPU tensor.
        references: (N, D) float32 CPU tensor; with ``exclude_self`` query i is reference i.
        k: Results per query.
        metric: ``"ip"`` (largest first) or ``"l2"`` (squared distance, smallest first).
        exclude_self: Leave query i out of its own results.
        chunk_size: Queries per yielded chunk.
        tile_size: Rows and columns of one score tile.
        sample_size: References (rounded up to whole tiles) whose scores set each query's
            start threshold; larger is tighter but scans more before streaming starts.
        symmetric: Compute each dot product once for a leave-one-out search over all items
            (``None``: when ``exclude_self``, Q == N and the buffers fit ``symmetric_memory``).
        symmetric_memory: Byte limit of the all-items candidate buffers (default:
            ``DEFAULT_SYMMETRIC_MEMORY_BYTES``, read at call time).
        threads: Threads of the top-k kernel (default: ``torch.get_num_threads()``); any
            number gives the same results.
        progress: Show a tqdm bar over the score tiles.

    Yields:
        ``(start, values, indices)`` for queries ``start:start + len(values)``, best first.

    Raises:
        RuntimeError: If the extension is not built.
        ValueError: On a bad tile size or more than 2**31 - 1 references.

    Examples:
        >>> x = torch.nn.functional.normalize(torch.randn(300, 16), dim=1)
        >>> if tiled_available():
        ...     _, v, i = next(tiled_knn_chunks(x, x, 5, exclude_self=True))
        ...     assert v.shape == (300, 5) and bool((i != torch.arange(300)[:, None]).all())
    """
    if _kernel is None:
        raise RuntimeError(
            "the compiled top-k extension lightly_grpo._tiled_topk is not built (the package "
            "was installed without a C++ compiler); use backend='faiss' or 'torch'"
        )
    if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < 8:
        raise ValueError(f"tile_size must be an integer >= 8, got {tile_size!r}")
    if len(references) > _INT32_MAX:
        raise ValueError(
            f"the tiled backend indexes at most 2**31 - 1 references, got {len(references)}"
        )
    if queries.device.type != "cpu" or references.device.type != "cpu":
        raise ValueError(f"the tiled backend runs on the CPU, got data on {queries.device}")
    threads = threads or torch.get_num_threads()
    same_items = exclude_self and len(queries) == len(references)
    if symmetric_memory is None:
        symmetric_memory = DEFAULT_SYMMETRIC_MEMORY_BYTES
    if symmetric is None:
        symmetric = same_items and symmetric_state_bytes(len(references), k) <= symmetric_memory
    elif symmetric and not same_items:
        raise ValueError(
            "symmetric=True needs a leave-one-out search with the queries as the references "
            f"(exclude_self=True and Q == N), got Q={len(queries)}, N={len(references)}"
        )
    if symmetric:
        yield from _symmetric(
            references, k, metric, chunk_size, tile_size, sample_size, threads, progress
        )
    else:
        yield from _chunked(
            queries,
            references,
            k,
            metric,
            exclude_self,
            chunk_size,
            tile_size,
            sample_size,
            threads,
            progress,
        )


def _norms_sq(x: Tensor) -> Tensor:
    return (x * x).sum(dim=1)


def _to_distances(values: Tensor, q: Tensor) -> Tensor:
    """``-(|r|^2 - 2 q.r)`` scores back to squared distances ``|q - r|^2``."""
    return (_norms_sq(q)[:, None] - values).clamp_min_(0.0)


def sample_rank(k: int, available: int, sample: int, z: float = 3.0) -> int | None:
    """Rank in a random sample of ``sample`` scores that the k-th best of ``available`` beats.

    The sample holds about ``k * sample / available`` of a query's k best scores; starting the
    query's threshold at the sample's ``mu + z sqrt(mu) + 2``-th best keeps at least k of all
    scores above it unless the sample is about ``z`` standard deviations unlucky (measured: 0.3 to
    0.5% of queries at 50k, the tail being heavier than a normal one), and lets through only
    about ``z sqrt(mu) * available / sample`` scores more than needed. Queries that end with
    fewer than k candidates are searched again without a threshold, so results never depend on
    luck. ``None`` when the rank would not fit in the sample.

    Examples:
        >>> sample_rank(568, 50_000, 2048)
        40
        >>> sample_rank(1900, 2000, 2048) is None
        True
    """
    mu = k * sample / available
    rank = math.ceil(mu + z * math.sqrt(mu) + 2)
    return rank if rank < sample else None


def _sample_width(n_items: int, tile_size: int, sample_size: int) -> int:
    """Width of the leading sample band: a multiple of the tile size (or all items)."""
    width = max(tile_size, -(-sample_size // tile_size) * tile_size)
    return min(width, n_items)


class _Tiles:
    """Tile loop shared by both modes: score buffer, metric transform and id bookkeeping."""

    def __init__(
        self,
        refs: Tensor,
        ids: np.ndarray,
        metric: str,
        tile_size: int,
        sample_size: int,
        threads: int,
        progress: bool,
    ):
        self.refs = refs  # references in visiting order
        self.ids = ids  # their original indices, int32
        self.l2 = metric == "l2"
        self.scale = 2.0 if self.l2 else 1.0
        self.bias = _norms_sq(refs).numpy() if self.l2 else None
        self.tile_size = tile_size
        # The first `sample` references (a random sample: visiting order) form one wide tile
        # that sets each query's start threshold.
        self.sample = _sample_width(len(refs), tile_size, sample_size)
        self.threads = threads
        self._buf = torch.empty(tile_size * max(tile_size, self.sample))
        self.progress = progress
        self.bar = tqdm(disable=True)  # replaced by open_bar once the number of tiles is known

    @classmethod
    def visiting(
        cls,
        refs: Tensor,
        metric: str,
        tile_size: int,
        sample_size: int,
        threads: int,
        progress: bool,
    ) -> _Tiles:
        """Tiles over ``refs`` in the fixed visiting order (see :func:`_visiting_order`)."""
        order = _visiting_order(len(refs))
        ids = order.to(torch.int32).numpy()
        return cls(refs[order].contiguous(), ids, metric, tile_size, sample_size, threads, progress)

    def open_bar(self, total: int) -> None:
        self.bar = tqdm(
            total=total, desc="kNN search", unit="tile", disable=not self.progress, leave=False
        )

    def scores(self, a: Tensor, b: Tensor) -> np.ndarray:
        out = self._buf[: len(a) * len(b)].view(len(a), len(b))
        torch.mm(a, b.T, out=out)
        return out.numpy()

    def col_bias(self, j0: int, n: int) -> np.ndarray | None:
        return None if self.bias is None else self.bias[j0 : j0 + n]

    def column_tiles(self, first: int) -> list[tuple[int, int]]:
        """``(start, width)`` of the column tiles from ``first`` on (the sample band is one)."""
        starts = [0] if first == 0 else []
        starts += list(range(max(first, self.sample), len(self.refs), self.tile_size))
        ends = starts[1:] + [len(self.refs)]
        return [(a, b - a) for a, b in zip(starts, ends, strict=True)]

    def start_thresholds(
        self,
        state: _TopKState,
        tile: np.ndarray,
        q_ids: np.ndarray,
        row_state0: int,
        skip_self: bool,
        available: int,
    ) -> None:
        """Sets the start thresholds of the queries of ``tile``, their scores on the sample band."""
        rank = sample_rank(state.k, available, self.sample)
        if rank is not None:
            state.set_thresholds(
                tile,
                scale=self.scale,
                col_bias=self.col_bias(0, self.sample),
                row_ids=q_ids,
                col_ids=self.ids[: self.sample],
                row_state0=row_state0,
                skip_self=skip_self,
                rank=rank,
                threads=self.threads,
            )

    def search_rows(
        self,
        state: _TopKState,
        q: Tensor,
        q_ids: np.ndarray,
        skip_self: bool,
        available: int | None,
        tick: bool = True,
    ) -> None:
        """Streams queries ``q`` (state rows 0..) against every reference, row side only.

        ``available`` (references each query competes over) sets the sampled start threshold;
        ``None`` searches without one. ``tick`` advances the progress bar per tile.
        """
        ts = self.tile_size
        for i0 in range(0, len(q), ts):
            qt, m = q[i0 : i0 + ts], min(ts, len(q) - i0)
            for j0, n in self.column_tiles(0):
                tile = self.scores(qt, self.refs[j0 : j0 + n])
                if j0 == 0 and available is not None:
                    self.start_thresholds(state, tile, q_ids[i0 : i0 + m], i0, skip_self, available)
                state.push(
                    tile,
                    scale=self.scale,
                    col_bias=self.col_bias(j0, n),
                    row_bias=None,
                    row_ids=q_ids[i0 : i0 + m],
                    col_ids=self.ids[j0 : j0 + n],
                    row_state0=i0,
                    col_state0=-1,
                    skip_self=skip_self,
                    threads=self.threads,
                )
                if tick:
                    self.bar.update()

    def finalize(
        self, state: _TopKState, rows: np.ndarray, q: Tensor, q_ids: np.ndarray, skip_self: bool
    ) -> tuple[Tensor, Tensor]:
        """Sorted results of state ``rows`` (queries ``q``); short rows are searched again."""
        short = np.nonzero(state.counts[rows] < state.k)[0]
        values, indices = state.finalize(rows, self.threads, allow_short=True)
        if len(short) > 0:
            # The sampled threshold was too high for these few queries: redo them exactly.
            redo = _TopKState(len(short), state.k)
            self.search_rows(redo, q[short], q_ids[short], skip_self, None, tick=False)
            values[short], indices[short] = redo.finalize(
                np.arange(len(short), dtype=np.int32), self.threads
            )
        return (_to_distances(values, q) if self.l2 else values), indices


def _chunked(
    q: Tensor,
    r: Tensor,
    k: int,
    metric: str,
    exclude_self: bool,
    chunk_size: int,
    tile_size: int,
    sample_size: int,
    threads: int,
    progress: bool,
) -> Iterator[tuple[int, Tensor, Tensor]]:
    tiles = _Tiles.visiting(r, metric, tile_size, sample_size, threads, progress)
    available = len(r) - int(exclude_self)
    # Queries are searched a whole row tile at a time (small blocks make small, slow GEMMs and
    # many calls) and handed out in chunks of chunk_size. One buffer serves every block.
    block = max(chunk_size, tile_size)
    row_tiles = sum(-(-min(block, len(q) - b) // tile_size) for b in range(0, len(q), block))
    tiles.open_bar(row_tiles * len(tiles.column_tiles(0)))
    state = _TopKState(min(block, len(q)), k)
    for block_start in range(0, len(q), block):
        qb = q[block_start : block_start + block]
        q_ids = np.arange(block_start, block_start + len(qb), dtype=np.int32)
        state.reset(len(qb))
        tiles.search_rows(state, qb, q_ids, exclude_self, available)
        for start in range(0, len(qb), chunk_size):
            stop = min(start + chunk_size, len(qb))
            rows = np.arange(start, stop, dtype=np.int32)
            values, indices = tiles.finalize(
                state, rows, qb[start:stop], q_ids[start:stop], exclude_self
            )
            yield block_start + start, values, indices
    tiles.bar.close()


def _symmetric(
    x: Tensor,
    k: int,
    metric: str,
    chunk_size: int,
    tile_size: int,
    sample_size: int,
    threads: int,
    progress: bool,
) -> Iterator[tuple[int, Tensor, Tensor]]:
    n_items = len(x)
    order = _visiting_order(n_items)
    tiles = _Tiles.visiting(x, metric, tile_size, sample_size, threads, progress)
    x_p, ids, ts, width = tiles.refs, tiles.ids, tile_size, tiles.sample
    bands = range(width, n_items, ts)
    tiles.open_bar(len(range(0, n_items, ts)) + sum(len(tiles.column_tiles(i)) for i in bands))
    state = _TopKState(n_items, k)
    # Pass 1, tiles (I, sample band): every item gets its start threshold from the sample band
    # (the first items in visiting order) before anything is pushed into it. Rows inside the
    # band see all of it (pairs within the band are computed both ways, rows side only); rows
    # after it push into the band's items through the column side too.
    for i0 in range(0, n_items, ts):
        xi, m = x_p[i0 : i0 + ts], min(ts, n_items - i0)
        tile = tiles.scores(xi, x_p[:width])
        tiles.start_thresholds(state, tile, ids[i0 : i0 + m], i0, True, n_items - 1)
        state.push(
            tile,
            scale=tiles.scale,
            col_bias=tiles.col_bias(0, width),
            row_bias=tiles.col_bias(i0, m),
            row_ids=ids[i0 : i0 + m],
            col_ids=ids[:width],
            row_state0=i0,
            col_state0=-1 if i0 < width else 0,
            skip_self=True,
            threads=threads,
        )
        tiles.bar.update()
    # Pass 2: the upper triangle after the band, each tile serving its rows and its columns
    # (the diagonal tiles hold both (i, j) and (j, i): rows side only).
    for i0 in range(width, n_items, ts):
        xi, m = x_p[i0 : i0 + ts], min(ts, n_items - i0)
        for j0, n in tiles.column_tiles(i0):
            state.push(
                tiles.scores(xi, x_p[j0 : j0 + n]),
                scale=tiles.scale,
                col_bias=tiles.col_bias(j0, n),
                row_bias=tiles.col_bias(i0, m),
                row_ids=ids[i0 : i0 + m],
                col_ids=ids[j0 : j0 + n],
                row_state0=i0,
                col_state0=-1 if j0 == i0 else j0,
                skip_self=True,
                threads=threads,
            )
            tiles.bar.update()
    tiles.bar.close()
    position = torch.empty(n_items, dtype=torch.int32)
    position[order] = torch.arange(n_items, dtype=torch.int32)
    position_np = position.numpy()
    for start in range(0, n_items, chunk_size):
        stop = min(start + chunk_size, n_items)
        q_ids = np.arange(start, stop, dtype=np.int32)
        yield start, *tiles.finalize(state, position_np[start:stop], x[start:stop], q_ids, True)
