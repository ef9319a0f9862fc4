from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from benchlib.synthetic import exact_unit
from lightly_grpo.index import knn_search, tiled
from lightly_grpo.index.tiled import (
    candidate_capacity,
    sample_rank,
    symmetric_state_bytes,
    tiled_available,
    tiled_knn_chunks,
)

pytestmark = pytest.mark.skipif(not tiled_available(), reason="extension not built")


@pytest.fixture(autouse=True, params=["vector", "scalar"])
def scan(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test runs on the AVX2 scan and on the portable scalar code (non-x86 machines)."""
    if not tiled_available():
        yield request.param
        return
    previous = tiled._kernel.set_vector_scan(request.param == "vector")
    yield request.param
    tiled._kernel.set_vector_scan(previous)


def _clustered(n: int, d: int = 20, classes: int = 7, seed: int = 0) -> torch.Tensor:
    """Clustered exact unit vectors (n, d + 4): every score is exact in float32, so the tiled
    search, the torch backend and the full-matrix reference compute the same bits whatever
    their GEMM shapes, and index-for-index equality tests ranking, not rounding (random floats
    made it depend on the CPU's kernels)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g)
    labels = torch.randint(classes, (n,), generator=g)
    return exact_unit(centres[labels] + 0.8 * torch.randn(n, d, generator=g), seed)


def _run(q: torch.Tensor, r: torch.Tensor, k: int, **kwargs: object) -> tuple[torch.Tensor, ...]:
    chunks = list(tiled_knn_chunks(q, r, k, **kwargs))  # type: ignore[arg-type]
    starts = [start for start, _, _ in chunks]
    assert starts == sorted(starts) and starts[0] == 0
    return torch.cat([v for _, v, _ in chunks]), torch.cat([i for _, _, i in chunks])


def _exact(q: torch.Tensor, r: torch.Tensor, k: int, metric: str, loo: bool) -> tuple:
    """Reference: full score matrix, stable sort (ties: lowest index first)."""
    if metric == "ip":
        scores = q @ r.T
    else:
        scores = -(2 * q @ r.T - (r * r).sum(1))  # ranking key; distances checked separately
        scores = -scores
    if loo:
        scores.fill_diagonal_(-float("inf"))
    order = scores.sort(dim=1, descending=True, stable=True).indices[:, :k]
    return order


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("tile_size", [64, 200])
def test_leave_one_out_matches_exact_search(metric: str, symmetric: bool, tile_size: int) -> None:
    # Several tiles, a sample band wider than one tile, ragged last tiles, chunks that cut
    # through tiles: every path of the tile loops runs.
    x = _clustered(1111, seed=1)
    k = 60
    values, indices = _run(
        x,
        x,
        k,
        metric=metric,
        exclude_self=True,
        symmetric=symmetric,
        tile_size=tile_size,
        sample_size=3 * tile_size,
        chunk_size=300,
    )
    reference = knn_search(x, x, k, metric=metric, backend="torch", exclude_self=True)
    torch.testing.assert_close(values, reference[0], atol=1e-5, rtol=0)
    assert torch.equal(indices, reference[1])
    assert not (indices == torch.arange(len(x))[:, None]).any()
    if metric == "ip":
        torch.testing.assert_close(values, (x[:, None] * x[indices]).sum(-1), atol=1e-6, rtol=0)
        assert (values[:, :-1] >= values[:, 1:]).all()
    else:
        expected = ((x[:, None] - x[indices]) ** 2).sum(-1)
        torch.testing.assert_close(values, expected, atol=1e-5, rtol=0)
        assert (values[:, :-1] <= values[:, 1:]).all()


def test_queries_against_other_references() -> None:
    q, r = _clustered(333, seed=2), _clustered(2000, seed=3)
    values, indices = _run(q, r, 25, tile_size=128, chunk_size=100)
    reference = knn_search(q, r, 25, backend="torch")
    torch.testing.assert_close(values, reference[0], atol=1e-6, rtol=0)
    assert torch.equal(indices, reference[1])


def test_class_sorted_input_gives_the_same_result() -> None:
    # Items sorted by class (an ImageFolder) are visited in a shuffled order; the result must
    # not depend on it.
    x = _clustered(900, seed=4)
    labels = (x @ x[:7].T).argmax(1)
    sorted_x = x[labels.argsort(stable=True)]
    a = _run(sorted_x, sorted_x, 120, exclude_self=True, tile_size=64)
    b = knn_search(sorted_x, sorted_x, 120, backend="torch", exclude_self=True)
    assert torch.equal(a[1], b[1])


@pytest.mark.parametrize("symmetric", [True, False])
def test_exact_ties_keep_the_lowest_indices_in_order(symmetric: bool) -> None:
    # Entries of +-0.5 make every score exact, so ties are real: among equal scores the lowest
    # indices win and are listed in ascending order, as on the other backends.
    g = torch.Generator().manual_seed(12)
    positions = torch.rand(500, 12, generator=g).argsort(dim=1)[:, :4]
    signs = torch.randint(0, 2, (500, 4), generator=g).float() * 2 - 1
    x = torch.zeros(500, 12).scatter_(1, positions, 0.5 * signs)
    for metric in ("ip", "l2"):
        values, indices = _run(
            x, x, 90, metric=metric, exclude_self=True, symmetric=symmetric, tile_size=64
        )
        assert torch.equal(indices, _exact(x, x, 90, metric, loo=True))
        b = knn_search(x, x, 90, metric=metric, backend="torch", exclude_self=True)
        assert torch.equal(values, b[0])


def test_duplicates_and_zero_scores() -> None:
    base = _clustered(60, seed=5)
    x = torch.cat([base, base, -base, torch.zeros(3, base.shape[1])])  # +0.0 / -0.0 scores too
    values, indices = _run(x, x, 40, exclude_self=True, tile_size=32)
    assert torch.equal(indices, _exact(x, x, 40, "ip", loo=True))


@pytest.mark.parametrize("symmetric", [True, False])
def test_unlucky_sample_thresholds_are_redone_exactly(
    monkeypatch: pytest.MonkeyPatch, symmetric: bool
) -> None:
    # Rank 1 starts every query at the best score of the sample band, far above its k-th best:
    # nearly every query ends short and must be searched again without a threshold.
    monkeypatch.setattr(tiled, "sample_rank", lambda k, available, sample: 1)
    x = _clustered(700, seed=6)
    values, indices = _run(
        x, x, 50, exclude_self=True, symmetric=symmetric, tile_size=64, sample_size=128
    )
    reference = knn_search(x, x, 50, backend="torch", exclude_self=True)
    assert torch.equal(indices, reference[1])
    torch.testing.assert_close(values, reference[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("n, k", [(2, 1), (5, 4), (300, 299), (300, 1)])
def test_small_sets_and_extreme_k(n: int, k: int) -> None:
    x = _clustered(n, seed=7)
    for symmetric in (True, False):
        _, indices = _run(x, x, k, exclude_self=True, symmetric=symmetric, tile_size=16)
        assert torch.equal(indices, _exact(x, x, k, "ip", loo=True))


def test_symmetric_is_chosen_by_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_sym, real_chunked = tiled._symmetric, tiled._chunked
    monkeypatch.setattr(
        tiled, "_symmetric", lambda *a: (calls.append("sym"), (yield from real_sym(*a)))[1]
    )
    monkeypatch.setattr(
        tiled,
        "_chunked",
        lambda *a: (calls.append("chunked"), (yield from real_chunked(*a)))[1],
    )
    x = _clustered(400, seed=8)
    need = symmetric_state_bytes(400, 10)
    _run(x, x, 10, exclude_self=True, symmetric_memory=need)
    _run(x, x, 10, exclude_self=True, symmetric_memory=need - 1)
    _run(x, x, 10)  # not leave-one-out
    assert calls == ["sym", "chunked", "chunked"]


def test_sample_rank_and_capacity() -> None:
    assert candidate_capacity(1000) == 1157
    rank = sample_rank(568, 50_000, 4096)
    assert rank is not None and 46 < rank < 80  # mu = 46.5 plus about 3 sigma
    assert sample_rank(3900, 4000, 4000) is None  # would not fit in the sample


def test_bad_arguments() -> None:
    x = _clustered(50, seed=9)
    with pytest.raises(ValueError, match="tile_size must be an integer >= 8, got 4"):
        _run(x, x, 3, tile_size=4)
    with pytest.raises(ValueError, match="symmetric=True needs a leave-one-out search"):
        _run(x[:10], x, 3, symmetric=True)


def test_kernel_rejects_mismatched_buffers() -> None:
    state = tiled._TopKState(4, 3)
    tile = np.zeros((4, 8), dtype=np.float32)
    ids = np.arange(8, dtype=np.int32)
    with pytest.raises(ValueError, match="col_ids holds 16 bytes, expected 32"):
        state.push(
            tile,
            scale=1.0,
            col_bias=None,
            row_bias=None,
            row_ids=ids[:4],
            col_ids=ids[:4],
            row_state0=0,
            col_state0=-1,
            skip_self=False,
            threads=1,
        )
    with pytest.raises(ValueError, match="tile rows/columns outside the state"):
        state.push(
            tile,
            scale=1.0,
            col_bias=None,
            row_bias=None,
            row_ids=ids[:4],
            col_ids=ids,
            row_state0=2,
            col_state0=-1,
            skip_self=False,
            threads=1,
        )


@pytest.mark.parametrize("symmetric", [True, False])
def test_progress_bar_counts_every_tile(monkeypatch: pytest.MonkeyPatch, symmetric: bool) -> None:
    bars: list[tiled.tqdm] = []

    class Recording(tiled.tqdm):  # type: ignore[misc, name-defined]
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(tiled, "tqdm", Recording)
    x = _clustered(700, seed=10)
    _run(
        x,
        x,
        30,
        exclude_self=True,
        symmetric=symmetric,
        tile_size=64,
        sample_size=128,
        progress=True,
    )
    bars = [bar for bar in bars if bar.total is not None]  # not the placeholder
    assert len(bars) == 1
    # 11 row bands of 64 and 10 column tiles (the 128-wide sample band, then 9 of 64).
    # Symmetric: 11 sample-band tiles, then the upper triangle of the 9 later bands (45).
    # Chunked: every row band against every column tile.
    assert bars[0].total == (11 + 45 if symmetric else 11 * 10)
    assert bars[0].n == bars[0].total


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_unnormalised_embeddings(metric: str) -> None:
    # Norms from 0.1 to 10: the L2 ranking key 2 q.r - |r|^2 differs between the row side and
    # the column side of a symmetric tile, and inner products are not bounded by 1.
    g = torch.Generator().manual_seed(13)
    x = torch.randn(900, 20, generator=g) * torch.logspace(-1, 1, 900)[torch.randperm(900)][:, None]
    for symmetric in (True, False):
        values, indices = _run(
            x, x, 40, metric=metric, exclude_self=True, symmetric=symmetric, tile_size=128
        )
        reference = knn_search(x, x, 40, metric=metric, backend="torch", exclude_self=True)
        torch.testing.assert_close(values, reference[0], atol=1e-4, rtol=1e-5)
        assert (indices == reference[1]).float().mean() > 0.999  # last-bit near-ties aside


@pytest.mark.parametrize("threads", [1, 3, 5])
def test_any_thread_count(threads: int) -> None:
    # Symmetric tiles are cut into row x column bands that threads claim on demand (narrow
    # tiles into fewer bands); the result must not depend on the split or the schedule.
    x = _clustered(500, seed=14)
    reference = knn_search(x, x, 33, backend="torch", exclude_self=True)
    for symmetric in (True, False):
        _, indices = _run(
            x, x, 33, exclude_self=True, symmetric=symmetric, tile_size=24, threads=threads
        )
        assert torch.equal(indices, reference[1])
