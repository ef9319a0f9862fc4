from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchlib.approximate import build_ivf_index, ivf_knn_search, recall_at_k
from benchlib.multi_gpu import FaissGpuUnavailableError, faiss_gpu_index, search_faiss_index
from benchlib.synthetic import clustered
from lightly_grpo.index import faiss, faiss_num_gpus, knn_search

pytestmark = pytest.mark.skipif(faiss is None, reason="FAISS not installed")


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    """Exact unit vectors (every score exact in float32): queries and references."""
    x, _ = clustered(2300, 28, classes=12, noise=1.5, seed=0)
    return x[:300], x[300:]


def test_nprobe_equal_nlist_is_exact(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    q, r = data
    k = 10
    exact_v, exact_i = knn_search(q, r, k + 1, backend="torch")
    # Precondition: no tie across the k-th place, so the exact neighbour set is unique.
    assert bool((exact_v[:, k - 1] > exact_v[:, k]).all())
    ivf = build_ivf_index(r, nlist=16)
    values, indices = ivf_knn_search(q, ivf, k, nprobe=16)
    assert recall_at_k(indices, exact_i[:, :k]) == 1.0
    assert torch.equal(indices, exact_i[:, :k])
    assert torch.equal(values, exact_v[:, :k])


def test_recall_grows_with_nprobe_and_stays_in_unit_interval() -> None:
    # Unclustered data: the neighbours of a query spread over many cells.
    g = torch.Generator().manual_seed(1)
    r = torch.randn(3000, 16, generator=g)
    q = torch.randn(200, 16, generator=g)
    _, exact = knn_search(F.normalize(q, dim=1), F.normalize(r, dim=1), 10, backend="torch")
    ivf = build_ivf_index(r, nlist=32, seed=3)
    recalls = [recall_at_k(ivf_knn_search(q, ivf, 10, p)[1], exact) for p in (1, 4, 16, 32)]
    assert all(0.0 <= x <= 1.0 for x in recalls)
    # Scanning more cells scans a superset, so no exact neighbour found is ever lost.
    assert recalls == sorted(recalls)
    assert recalls[0] < 1.0
    assert recalls[-1] == 1.0


def test_results_sorted_ties_by_index_and_normalised(
    data: tuple[torch.Tensor, torch.Tensor],
) -> None:
    q, r = data
    # Duplicated references tie exactly; scaling must not matter (cosine).
    refs = torch.cat([r[:500], r[:500]]) * 3.0
    ivf = build_ivf_index(refs, nlist=8)
    values, indices = ivf_knn_search(q * 0.5, ivf, 6, nprobe=8)
    assert bool((values[:, :-1] >= values[:, 1:]).all())
    assert float(values.max()) <= 1.0 + 1e-6
    tied = values[:, :-1] == values[:, 1:]
    assert bool(tied[:, 0].all())  # every best neighbour appears twice
    assert bool((indices[:, :-1][tied] < indices[:, 1:][tied]).all())
    assert bool((indices[:, 1] - indices[:, 0] == 500).all())


def test_missing_results_are_minus_one_and_minus_inf() -> None:
    g = torch.Generator().manual_seed(2)
    r = torch.randn(200, 8, generator=g)
    ivf = build_ivf_index(r, nlist=50)
    # One cell of about four references cannot hold 100 neighbours.
    values, indices = ivf_knn_search(r[:20], ivf, 100, nprobe=1)
    missing = indices == -1
    assert bool(missing.any())
    assert not bool(values.isnan().any())
    assert bool((values[missing] == -math.inf).all())
    assert bool(torch.isfinite(values[~missing]).all())
    # Missing entries come after the found ones in every row.
    assert bool((missing.int().diff(dim=1) >= 0).all())
    exact = knn_search(F.normalize(r[:20], dim=1), F.normalize(r, dim=1), 100)[1]
    assert recall_at_k(indices, exact) <= (~missing).float().mean().item()


def test_seed_and_train_size_numpy_input(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    q, r = data
    a = build_ivf_index(r.numpy(), nlist=16, seed=5, train_size=800)
    b = build_ivf_index(r, nlist=16, seed=5, train_size=800)
    ra, rb = ivf_knn_search(q.numpy(), a, 5, nprobe=2), ivf_knn_search(q, b, 5, nprobe=2)
    assert torch.equal(ra[1], rb[1]) and torch.equal(ra[0], rb[0])
    assert a.size == len(r) and a.index.ntotal == len(r)


def test_recall_at_k_counts() -> None:
    exact = torch.tensor([[0, 1, 2], [3, 4, 5]])
    assert recall_at_k(exact.flip(1), exact) == 1.0
    assert recall_at_k(exact + 10, exact) == 0.0
    assert recall_at_k(torch.tensor([[2, -1, -1], [3, 3, 9]]), exact) == pytest.approx(2 / 6)
    assert recall_at_k(exact, exact, chunk_size=1) == 1.0


@pytest.mark.parametrize(
    ("approx", "exact", "match"),
    [
        (torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long), "same shape"),
        (torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), "integer"),
        (torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), "2-D"),
        (torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 3, dtype=torch.long), "empty"),
        (torch.zeros(1, 2, dtype=torch.long), torch.tensor([[0, -1]]), "negative"),
    ],
)
def test_recall_at_k_errors(approx: torch.Tensor, exact: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        recall_at_k(approx, exact)


def test_build_errors() -> None:
    r = torch.randn(100, 8)
    with pytest.raises(ValueError, match=r"nlist must be an integer in \[1, 100\].*got 101"):
        build_ivf_index(r, nlist=101)
    with pytest.raises(ValueError, match="nlist.*got 0"):
        build_ivf_index(r, nlist=0)
    with pytest.raises(ValueError, match=r"nlist must be an integer in \[1, 20\]"):
        build_ivf_index(r, nlist=30, train_size=20)
    with pytest.raises(ValueError, match="train_size.*got 200"):
        build_ivf_index(r, nlist=4, train_size=200)
    bad = r.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="references contains NaN"):
        build_ivf_index(bad, nlist=4)
    with pytest.raises(ValueError, match="all-zero row"):
        build_ivf_index(torch.cat([r, torch.zeros(1, 8)]), nlist=4)
    with pytest.raises(ValueError, match="2-D"):
        build_ivf_index(torch.randn(10), nlist=2)


def test_search_errors() -> None:
    r = torch.randn(100, 8)
    ivf = build_ivf_index(r, nlist=4)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 100\].*got 101"):
        ivf_knn_search(r, ivf, 101, nprobe=1)
    with pytest.raises(ValueError, match="k must.*got 0"):
        ivf_knn_search(r, ivf, 0, nprobe=1)
    with pytest.raises(ValueError, match="nprobe must.*got 0"):
        ivf_knn_search(r, ivf, 5, nprobe=0)
    with pytest.raises(ValueError, match="nprobe must.*nlist=4.*got 5"):
        ivf_knn_search(r, ivf, 5, nprobe=5)
    with pytest.raises(ValueError, match=r"dimension 9 but the index has dimension 8"):
        ivf_knn_search(torch.randn(3, 9), ivf, 5, nprobe=1)
    with pytest.raises(ValueError, match="empty queries"):
        ivf_knn_search(torch.randn(0, 8), ivf, 5, nprobe=1)
    with pytest.raises(ValueError, match="queries contains NaN"):
        ivf_knn_search(torch.full((2, 8), float("nan")), ivf, 5, nprobe=1)
    with pytest.raises(ValueError, match="IVFIndex"):
        ivf_knn_search(r, ivf.index, 5, nprobe=1)


def test_search_faiss_index_matches_knn_search(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    q, r = data
    flat = faiss.IndexFlatIP(r.shape[1])
    flat.add(r.numpy())
    values, indices = search_faiss_index(flat, q, 7)
    exact_v, exact_i = knn_search(q, r, 7, backend="torch")
    assert torch.equal(indices, exact_i) and torch.equal(values, exact_v)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 2000\]"):
        search_faiss_index(flat, q, 2001)
    with pytest.raises(ValueError, match="dimension 3"):
        search_faiss_index(flat, np.zeros((2, 3), dtype=np.float32), 1)


@pytest.mark.skipif(faiss_num_gpus() > 0, reason="tests the machine without FAISS GPUs")
@pytest.mark.parametrize("mode", ["replicate", "shard", "single"])
def test_faiss_gpu_index_without_gpu_raises(mode: str) -> None:
    r = torch.randn(50, 8)
    with pytest.raises(FaissGpuUnavailableError, match=r"get_num_gpus\(\) is 0"):
        faiss_gpu_index(r, mode=mode)  # type: ignore[arg-type]
    with pytest.raises(FaissGpuUnavailableError):
        build_ivf_index(r, nlist=2, gpu_mode=mode)  # type: ignore[arg-type]
    # It is a ValueError, as resolve_backend's "no FAISS GPU" error is.
    with pytest.raises(ValueError):
        faiss_gpu_index(r.numpy(), mode=mode, devices=[0])  # type: ignore[arg-type]


def test_faiss_gpu_index_bad_mode_or_metric() -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        faiss_gpu_index(torch.randn(5, 4), mode="mirror")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="metric must be"):
        faiss_gpu_index(torch.randn(5, 4), metric="cos")  # type: ignore[arg-type]


def test_search_params_survive_torch_utils_patch() -> None:
    # The "faiss-gpu" backend imports faiss.contrib.torch_utils, which replaces Index.search
    # process-wide with a version that has no `params`; the IVF search must still work.
    torch_utils = pytest.importorskip("faiss.contrib.torch_utils")
    assert hasattr(faiss.IndexIVFFlat, "search_numpy"), torch_utils
    r = torch.randn(500, 8)
    ivf = build_ivf_index(r, nlist=8)
    _, exact = knn_search(F.normalize(r[:50], dim=1), F.normalize(r, dim=1), 5)
    assert recall_at_k(ivf_knn_search(r[:50], ivf, 5, nprobe=8)[1], exact) == 1.0
