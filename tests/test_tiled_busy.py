"""The tiled backend's block scheduler: exact on any sizes and thread counts, busy machine or not.

A symmetric (leave-one-out) tile is cut into bands x bands blocks that threads claim on demand
(no two running blocks share a row band or a column band); these tests use tiles large enough
that the scheduler really cuts them (checked with the kernel's ``symmetric_bands``).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Literal

import numpy as np
import pytest
import torch

from benchlib.synthetic import exact_unit
from lightly_grpo.index import knn_search, tiled
from lightly_grpo.index.tiled import tiled_available, tiled_knn_chunks

pytestmark = pytest.mark.skipif(not tiled_available(), reason="extension not built")


@pytest.fixture(params=["vector", "scalar"])
def scan(request: pytest.FixtureRequest) -> Iterator[str]:
    """The AVX2 scan and the portable scalar code (what non-x86 machines run)."""
    previous = tiled._kernel.set_vector_scan(request.param == "vector")
    yield request.param
    tiled._kernel.set_vector_scan(previous)


def _clustered(n: int, d: int = 20, classes: int = 5, seed: int = 0) -> torch.Tensor:
    """Clustered unit vectors whose scores are exact in float32 (index-for-index comparable)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g)
    labels = torch.randint(classes, (n,), generator=g)
    return exact_unit(centres[labels] + 0.8 * torch.randn(n, d, generator=g), seed)


def _search(x: torch.Tensor, k: int, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
    chunks = list(tiled_knn_chunks(x, x, k, exclude_self=True, **kwargs))  # type: ignore[arg-type]
    return torch.cat([v for _, v, _ in chunks]), torch.cat([i for _, _, i in chunks])


def test_symmetric_bands() -> None:
    # (row bands, column bands): 4 and 2 per thread (at most 16 threads), at least 32 rows and
    # 256 columns each, at most 64; (1, 1) when a side would have one band.
    bands = tiled._kernel.symmetric_bands
    assert bands(2048, 2048, 1) == (1, 1)  # one thread: one block, no scheduler
    assert bands(2048, 4096, 2) == (8, 4)
    assert bands(2048, 2048, 16) == (64, 8)  # 2048 // 256 column bands
    assert bands(4096, 16384, 64) == (64, 32)  # threads capped at 16, rows at 64 bands
    assert bands(40, 2048, 4) == (1, 1)  # too few rows to cut
    assert bands(331, 600, 3) == (10, 2)
    assert bands(331, 500, 3) == (1, 1)  # one column band: blocks could not run at once
    with pytest.raises(ValueError, match="bad tile shape m=0 n=5"):
        bands(0, 5, 2)


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
def test_symmetric_tile_matches_brute_force(scan: str, threads: int) -> None:
    # One symmetric tile pushed straight into the kernel: odd sizes (no band divides them, the
    # column cuts round down to multiples of 8), both sides checked against a full sort.
    m, n, k = 331, 1031, 23
    rng = np.random.default_rng(threads)
    tile = rng.integers(-64, 64, size=(m, n)).astype(np.float32) / 64  # many exact ties
    expected = (1, 1) if threads == 1 else (min(4 * threads, m // 32), 1031 // 256)
    assert tiled._kernel.symmetric_bands(m, n, threads) == expected
    row_ids = np.arange(m, dtype=np.int32)
    col_ids = np.arange(m, m + n, dtype=np.int32)
    state = tiled._TopKState(m + n, k)
    state.push(
        np.ascontiguousarray(tile),
        scale=1.0,
        col_bias=None,
        row_bias=None,
        row_ids=row_ids,
        col_ids=col_ids,
        row_state0=0,
        col_state0=m,
        skip_self=True,
        threads=threads,
    )
    values, ids = state.finalize(np.arange(m + n, dtype=np.int32), threads)
    # Descending score, then ascending id: a stable sort of the negated scores.
    rows = np.argsort(-tile, axis=1, kind="stable")[:, :k]
    cols = np.argsort(-tile.T, axis=1, kind="stable")[:, :k]
    assert np.array_equal(ids[:m].numpy(), col_ids[rows])
    assert np.array_equal(ids[m:].numpy(), row_ids[cols])
    assert np.array_equal(values[:m].numpy(), np.take_along_axis(tile, rows, axis=1))
    assert np.array_equal(values[m:].numpy(), np.take_along_axis(tile.T, cols, axis=1))


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_leave_one_out_any_threads_odd_sizes(threads: int, metric: Literal["ip", "l2"]) -> None:
    # 2237 items in tiles of 512: a ragged last band of 189, and full tiles cut into
    # min(4 threads, 16) x 2 blocks for any thread count above 1.
    x = _clustered(2237, seed=threads)
    expected = (1, 1) if threads == 1 else (min(4 * threads, 16), 2)
    assert tiled._kernel.symmetric_bands(512, 512, threads) == expected
    values, indices = _search(
        x, 57, metric=metric, symmetric=True, tile_size=512, sample_size=512, threads=threads
    )
    reference = knn_search(x, x, 57, metric=metric, backend="torch", exclude_self=True)
    assert torch.equal(indices, reference[1])
    torch.testing.assert_close(values, reference[0], atol=1e-5, rtol=0)
    # The chunked search (row side only, rows handed out on demand) agrees bit for bit.
    chunked = _search(x, 57, metric=metric, symmetric=False, tile_size=512, threads=threads)
    assert torch.equal(chunked[1], indices) and torch.equal(chunked[0], values)


@pytest.mark.parametrize("k_below_n", [1, 2, 37])
def test_k_near_n(k_below_n: int) -> None:
    # k close to N: every candidate buffer overflows and is cut many times, from every block.
    n = 1100
    x = _clustered(n, seed=20 + k_below_n)
    k = n - k_below_n
    reference = knn_search(x, x, k, backend="torch", exclude_self=True)
    for threads in (2, 3):
        _, indices = _search(x, k, symmetric=True, tile_size=512, threads=threads)
        assert torch.equal(indices, reference[1])


def test_more_threads_than_bands_or_cores() -> None:
    # 9 threads on a two-core machine, tiles with only 2 column bands: threads that find no free
    # pair of bands wait, and must neither deadlock nor change the result.
    x = _clustered(1300, seed=30)
    assert tiled._kernel.symmetric_bands(512, 512, 9) == (16, 2)
    reference = knn_search(x, x, 40, backend="torch", exclude_self=True)
    _, indices = _search(x, 40, symmetric=True, tile_size=512, threads=9)
    assert torch.equal(indices, reference[1])


def test_exact_while_a_competing_process_keeps_a_core_busy() -> None:
    # The scheduling then differs from run to run (a thread sharing its core with the busy loop
    # runs at about half speed and claims fewer blocks); the neighbours must not.
    x = _clustered(1700, seed=40)
    reference = knn_search(x, x, 64, backend="torch", exclude_self=True)
    quiet = _search(x, 64, symmetric=True, tile_size=512, threads=2)
    busy = subprocess.Popen([sys.executable, "-c", "while True:\n    pass\n"])
    try:
        time.sleep(0.2)
        assert busy.poll() is None  # really competing
        for threads in (2, 4):
            values, indices = _search(x, 64, symmetric=True, tile_size=512, threads=threads)
            assert torch.equal(indices, reference[1])
            assert torch.equal(indices, quiet[1]) and torch.equal(values, quiet[0])
    finally:
        busy.kill()
        busy.wait()
