from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score

from benchlib.synthetic import exact_unit
from lightly_grpo import index
from lightly_grpo.data import load_fashion_mnist
from lightly_grpo.index import (
    auto_chunk_size,
    available_backends,
    iter_knn_search,
    kmeans,
    knn_search,
    resolve_backend,
    search,
    spherical_kmeans,
)

needs_faiss = pytest.mark.skipif(index.faiss is None, reason="FAISS is not installed")
CPU_BACKENDS = ["faiss", "tiled", "torch"]


def _skip_unavailable(backend: str) -> None:
    if backend not in available_backends():
        pytest.skip(f"backend {backend!r} is not available here")


def _random(n: int = 1500, d: int = 44, seed: int = 0) -> torch.Tensor:
    """Random directions as exact unit vectors (n, d + 4): every backend computes the same bits
    (benchlib.synthetic), so agreement between backends is exact on any CPU."""
    g = torch.Generator().manual_seed(seed)
    return exact_unit(torch.randn(n, d, generator=g), seed)


@pytest.fixture(scope="module")
def fashion_pca() -> torch.Tensor:
    """PCA-64 of 3,000 Fashion-MNIST test images as exact unit vectors: real, clustered data."""
    images, _ = load_fashion_mnist(split="test")
    pixels = images[:3000].reshape(3000, -1).astype(np.float32) / 255.0
    emb = PCA(n_components=64, random_state=0).fit_transform(pixels).astype(np.float32)
    return exact_unit(torch.from_numpy(emb))


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """Raw scikit-learn digits pixels as exact unit vectors (many exact ties)."""
    return exact_unit(torch.from_numpy(load_digits().data.astype(np.float32)))


def _assert_same_neighbors(
    a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """Identical values and indices. On exact embeddings every backend computes the same bits
    and orders ties by index, so nothing is left to rounding: a tolerance would only hide a
    wrong ranking (random floats made these comparisons depend on the CPU's GEMM kernels)."""
    (va, ia), (vb, ib) = a, b
    assert torch.equal(va, vb)
    assert torch.equal(ia, ib)


@needs_faiss
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_faiss_and_torch_agree_on_random_embeddings(metric: str) -> None:
    q, r = _random(400, seed=1), _random(1500, seed=2)
    faiss_res = knn_search(q, r, 10, metric=metric, backend="faiss")
    torch_res = knn_search(q, r, 10, metric=metric, backend="torch")
    _assert_same_neighbors(faiss_res, torch_res)


@needs_faiss
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_faiss_and_torch_agree_on_real_embeddings(
    fashion_pca: torch.Tensor, digits: torch.Tensor, metric: str
) -> None:
    for x in (fashion_pca, digits):
        faiss_res = knn_search(x, x, 15, metric=metric, backend="faiss", exclude_self=True)
        torch_res = knn_search(x, x, 15, metric=metric, backend="torch", exclude_self=True)
        _assert_same_neighbors(faiss_res, torch_res)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_tiled_and_torch_agree_on_random_and_real_embeddings(
    fashion_pca: torch.Tensor, digits: torch.Tensor, metric: str
) -> None:
    _skip_unavailable("tiled")
    q, r = _random(400, seed=1), _random(1500, seed=2)
    pairs = [(q, r, False), (fashion_pca, fashion_pca, True), (digits, digits, True)]
    for a, b, loo in pairs:
        tiled = knn_search(a, b, 15, metric=metric, backend="tiled", exclude_self=loo)
        torch_res = knn_search(a, b, 15, metric=metric, backend="torch", exclude_self=loo)
        _assert_same_neighbors(tiled, torch_res)


def test_values_are_exact_similarities_and_distances() -> None:
    q, r = _random(50, seed=3), _random(300, seed=4)
    sims, idx = knn_search(q, r, 7, backend="torch")
    torch.testing.assert_close(sims, (q[:, None, :] * r[idx]).sum(-1), atol=1e-6, rtol=0)
    assert (sims[:, :-1] >= sims[:, 1:]).all()
    full = q @ r.T
    torch.testing.assert_close(sims, full.topk(7, dim=1).values, atol=1e-6, rtol=0)
    dists, idx = knn_search(q, r, 7, metric="l2", backend="torch")
    torch.testing.assert_close(dists, ((q[:, None, :] - r[idx]) ** 2).sum(-1), atol=1e-5, rtol=0)
    assert (dists[:, :-1] <= dists[:, 1:]).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_chunked_equals_unchunked(backend: str) -> None:
    _skip_unavailable(backend)
    x = _random(700, seed=5)
    whole = knn_search(x, x, 12, backend=backend, chunk_size=700, exclude_self=True)
    for chunk in (1, 33, 256):
        part = knn_search(x, x, 12, backend=backend, chunk_size=chunk, exclude_self=True)
        _assert_same_neighbors(whole, part)
    chunks = list(iter_knn_search(x, x, 12, backend=backend, chunk_size=256))
    assert [start for start, _, _ in chunks] == [0, 256, 512]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_exclude_self_drops_the_query(backend: str) -> None:
    _skip_unavailable(backend)
    x = _random(300, seed=6)
    sims, idx = knn_search(x, x, 5, backend=backend, exclude_self=True)
    assert not (idx == torch.arange(300)[:, None]).any()
    with_self = knn_search(x, x, 6, backend=backend)
    assert (with_self[1][:, 0] == torch.arange(300)).all()
    assert torch.equal(with_self[1][:, 1:], idx)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_exclude_self_with_duplicates_and_tie_order(backend: str) -> None:
    _skip_unavailable(backend)
    base = _random(50, seed=7)
    x = torch.cat([base, base, base])  # Every item has two exact duplicates.
    sims, idx = knn_search(x, x, 4, backend=backend, exclude_self=True)
    rows = torch.arange(150)
    assert not (idx == rows[:, None]).any()
    # The two duplicates come first, lowest index first, at the same similarity.
    expected = torch.stack([rows % 50, rows % 50 + 50, rows % 50 + 100], dim=1)
    expected = expected[expected != rows[:, None]].view(150, 2)
    assert torch.equal(idx[:, :2], expected)
    assert torch.equal(sims[:, 0], sims[:, 1])


@needs_faiss
def test_backends_agree_with_duplicates() -> None:
    base = _random(40, seed=8)
    x = torch.cat([base, base, base[:20]])
    a = knn_search(x, x, 6, backend="faiss", exclude_self=True)
    b = knn_search(x, x, 6, backend="torch", exclude_self=True)
    # FAISS's blocked GEMM may give two copies of a vector similarities one ulp apart, so only
    # the values (and the first result, an exact copy) must agree.
    torch.testing.assert_close(a[0], b[0], atol=1e-6, rtol=0)
    assert torch.equal(x[a[1][:, 0]], x[b[1][:, 0]])


@needs_faiss
@pytest.mark.parametrize("k", [5, 150])
def test_backends_agree_exactly_on_exact_ties(k: int) -> None:
    # Entries of +-0.5 make every similarity exact, so ties are real on both backends: both
    # keep the lowest tied indices at the k-th place and list ties in ascending index order.
    g = torch.Generator().manual_seed(12)
    positions = torch.rand(400, 12, generator=g).argsort(dim=1)[:, :4]
    signs = torch.randint(0, 2, (400, 4), generator=g).float() * 2 - 1
    x = torch.zeros(400, 12).scatter_(1, positions, 0.5 * signs)
    for metric in ("ip", "l2"):
        a = knn_search(x, x, k, metric=metric, backend="faiss", exclude_self=True)
        b = knn_search(x, x, k, metric=metric, backend="torch", exclude_self=True)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        if "tiled" in available_backends():
            c = knn_search(x, x, k, metric=metric, backend="tiled", exclude_self=True)
            assert torch.equal(c[0], b[0]) and torch.equal(c[1], b[1])
        sims = x @ x.T
        sims.fill_diagonal_(-math.inf)
        order = sims.sort(dim=1, descending=True, stable=True).indices[:, :k]
        if metric == "ip":
            assert torch.equal(a[1], order)


def test_numpy_input_and_k_equal_to_all_references() -> None:
    x = _random(30, seed=9).numpy()
    sims, idx = knn_search(x, x, 29, backend="torch", exclude_self=True)
    assert sims.shape == (30, 29)
    assert all(
        sorted(row) == [j for j in range(30) if j != i] for i, row in enumerate(idx.tolist())
    )
    sims, idx = knn_search(x[:5], x, 30, backend="torch")
    assert idx.shape == (5, 30)


def test_tiled_extension_is_built() -> None:
    # The package's own set-up (make setup / CI) always has a C++ compiler; a silently skipped
    # build (the extension is optional) would quietly fall back to slower backends, so it fails
    # here instead. (tests/test_tiled_search.py skips itself without the extension.)
    assert index.tiled_available()


def test_backend_resolution() -> None:
    assert resolve_backend("torch") == "torch"
    assert available_backends()[-1] == "torch"
    if index.tiled_available():
        # The compiled tiled search is the CPU default wherever it was built.
        assert resolve_backend("auto") == "tiled"
        assert resolve_backend("auto", "cpu") == "tiled"
        assert available_backends().index("tiled") < available_backends().index("torch")
    elif index.faiss is not None:
        assert resolve_backend("auto") == "faiss"
        assert resolve_backend("auto", "cpu") == "faiss"
    if index.faiss is not None:
        assert resolve_backend("faiss", "cpu") == "faiss"
        if index.faiss_num_gpus() == 0:
            with pytest.raises(ValueError, match="faiss-gpu"):
                resolve_backend("faiss-gpu", "cpu")
    else:
        assert resolve_backend("auto") in ("tiled", "torch")
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("annoy")
    if index.tiled_available():
        # The tiled search is CPU-only: CUDA data never resolves to it.
        assert resolve_backend("auto", "cuda") in ("faiss-gpu", "faiss", "torch")
        with pytest.raises(ValueError, match="runs on the CPU, got data on cuda"):
            resolve_backend("tiled", "cuda")


def test_auto_chunk_size_bounds_memory() -> None:
    small = auto_chunk_size(1_000, 10)
    big = auto_chunk_size(2_000_000, 10)
    assert 1 <= big < small <= 8192
    # The similarity block of one chunk stays within the 256 MiB budget.
    assert big * 2_000_000 * 4 <= index.DEFAULT_MEMORY_BUDGET_BYTES


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_spherical_kmeans_recovers_separated_clusters(backend: str) -> None:
    _skip_unavailable(backend)
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(6, 32, generator=g), dim=1)
    truth = torch.arange(600) % 6
    x = centres[truth] + 0.05 * torch.randn(600, 32, generator=g)
    centroids, assign = spherical_kmeans(x, 6, backend=backend, seed=1)
    assert centroids.shape == (6, 32)
    torch.testing.assert_close(centroids.norm(dim=1), torch.ones(6), atol=1e-5, rtol=0)
    assert adjusted_rand_score(truth.numpy(), assign.numpy()) == pytest.approx(1.0)
    again = spherical_kmeans(x, 6, backend=backend, seed=1)[1]
    assert torch.equal(assign, again)


@needs_faiss
def test_spherical_kmeans_faiss_and_torch_fallback_agree_on_digits(
    digits: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FAISS's k-means runs wherever FAISS imports; the torch loop only without FAISS (simulated
    # here by hiding the module). Same seeds, same API and output shapes, both seeded.
    labels = load_digits().target
    results = {"faiss": spherical_kmeans(digits, 10, seed=0, backend="torch")}
    with monkeypatch.context() as patch:
        patch.setattr(search, "faiss", None)
        results["torch"] = spherical_kmeans(digits, 10, seed=0, backend="torch")
        again = spherical_kmeans(digits, 10, seed=0, backend="torch")
        assert torch.equal(results["torch"][1], again[1])
    scores = []
    for centroids, assign in results.values():
        assert centroids.shape == (10, digits.shape[1]) and centroids.dtype == torch.float32
        assert assign.shape == (len(digits),) and assign.dtype == torch.int64
        torch.testing.assert_close(centroids.norm(dim=1), torch.ones(10), atol=1e-5, rtol=0)
        assert len(assign.unique()) == 10
        scores.append(adjusted_rand_score(labels, assign.numpy()))
    # Real data: both find the digit structure (raw-pixel k-means reaches ARI ~0.6-0.7).
    assert min(scores) > 0.45
    assert abs(scores[0] - scores[1]) < 0.15
    # Different Lloyd implementations: the FAISS path really ran (not the torch loop).
    assert not torch.equal(results["faiss"][0], results["torch"][0])


@needs_faiss
def test_spherical_kmeans_uses_faiss_lloyd_when_installed() -> None:
    x = _random(400, seed=15)
    seeds = kmeans._kmeans_plus_plus(F.normalize(x, dim=1), 6, torch.Generator().manual_seed(3))
    expected = kmeans._lloyd_faiss(x, seeds, 20, 3, gpu=False)
    for backend in CPU_BACKENDS:
        if backend in available_backends():
            centroids, _ = spherical_kmeans(x, 6, seed=3, backend=backend)
            assert torch.equal(centroids, expected), backend


def test_spherical_kmeans_zero_iterations_returns_the_seeds() -> None:
    x = _random(200, seed=16)
    centroids, assign = spherical_kmeans(x, 4, iterations=0, seed=2)
    seeds = kmeans._kmeans_plus_plus(x, 4, torch.Generator().manual_seed(2))
    assert torch.equal(centroids, seeds)
    assert torch.equal(assign, (x @ seeds.T).argmax(dim=1))


def test_knn_search_errors() -> None:
    x = _random(20, seed=10)
    with pytest.raises(ValueError, match=r"differ in dimension: \(20, 48\) vs \(20, 16\)"):
        knn_search(x, x[:, :16], 3)
    nan = x.clone()
    nan[7, 3] = float("nan")
    with pytest.raises(ValueError, match="queries contains NaN or inf.*first at row 7"):
        knn_search(nan, x, 3)
    inf = x.clone()
    inf[2, 0] = float("inf")
    with pytest.raises(ValueError, match="references contains NaN or inf"):
        knn_search(x, inf, 3)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 20\].*got 21"):
        knn_search(x, x, 21)
    with pytest.raises(ValueError, match=r"\[1, 19\].*minus the query itself.*got 20"):
        knn_search(x, x, 20, exclude_self=True)
    with pytest.raises(ValueError, match="got 0"):
        knn_search(x, x, 0)
    with pytest.raises(ValueError, match=r"empty query set: queries has shape \(0, 48\)"):
        knn_search(x[:0], x, 3)
    with pytest.raises(ValueError, match="metric must be"):
        knn_search(x, x, 3, metric="cosine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_size"):
        knn_search(x, x, 3, chunk_size=0)
    with pytest.raises(ValueError, match="more queries"):
        knn_search(x, x[:10], 3, exclude_self=True)
    with pytest.raises(ValueError, match="2-D"):
        knn_search(x[0], x, 3)


def test_spherical_kmeans_errors() -> None:
    x = _random(20, seed=11)
    with pytest.raises(ValueError, match=r"num_clusters must be in \[1, 20\].*got 21"):
        spherical_kmeans(x, 21)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        spherical_kmeans(bad, 2)
    with pytest.raises(ValueError, match="at least one point"):
        spherical_kmeans(x[:0], 1)
