from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightly.utils.benchmarking import knn_predict
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from sklearn.decomposition import PCA

from lightly_grpo import index
from lightly_grpo.data import load_fashion_mnist
from lightly_grpo.evaluation import (
    KNN_PROTOCOLS,
    RetrievalEvaluator,
    RetrievalResult,
    knn_vote,
    make_knn_func,
)

needs_faiss = pytest.mark.skipif(index.faiss is None, reason="FAISS is not installed")

PML_METRICS = (
    "precision_at_1",
    "r_precision",
    "mean_average_precision_at_r",
    "mean_average_precision",
)
CPU = torch.device("cpu")

# Every CPU search backend available here (the tiled one needs the compiled extension).
CPU_BACKENDS = [b for b in ("faiss", "tiled", "torch") if b in index.available_backends()]


def _clustered(
    n: int, d: int, classes: int, noise: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    x = centres[labels] + noise * torch.randn(n, d, generator=g)
    return F.normalize(x, dim=1), labels


@pytest.fixture(scope="module")
def fashion() -> tuple[torch.Tensor, torch.Tensor]:
    """PCA-64 of 3,000 Fashion-MNIST test images (L2-normalised) and their labels."""
    images, labels = load_fashion_mnist(split="test")
    pixels = images[:3000].reshape(3000, -1).astype(np.float32) / 255.0
    emb = PCA(n_components=64, random_state=0).fit_transform(pixels).astype(np.float32)
    return F.normalize(torch.from_numpy(emb), dim=1), torch.from_numpy(labels[:3000])


def _pml(
    query: torch.Tensor,
    query_labels: torch.Tensor,
    reference: torch.Tensor | None = None,
    reference_labels: torch.Tensor | None = None,
    knn_func: object | None = None,
) -> dict[str, float]:
    calc = AccuracyCalculator(include=PML_METRICS, k="max_bin_count", device=CPU, knn_func=knn_func)
    return dict(calc.get_accuracy(query, query_labels, reference, reference_labels))


def _ours(
    query: torch.Tensor,
    query_labels: torch.Tensor,
    reference: torch.Tensor | None = None,
    reference_labels: torch.Tensor | None = None,
    backend: str = "faiss",
) -> RetrievalResult:
    evaluator = RetrievalEvaluator(backend=backend, nmi=False, knn_protocols=("dino",))
    return evaluator.evaluate(query, query_labels, reference, reference_labels)


def _assert_matches_pml(ours: RetrievalResult, pml: dict[str, float], tol: float = 1e-6) -> None:
    for name in PML_METRICS:
        assert ours.metrics[name] == pytest.approx(pml[name], abs=tol), name


@needs_faiss
@pytest.mark.parametrize("backend", ["faiss", "tiled", "torch"])
def test_matches_accuracy_calculator_on_random_embeddings(backend: str) -> None:
    if backend not in index.available_backends():
        pytest.skip(f"backend {backend!r} is not available here")
    x, y = _clustered(2000, 32, 15, noise=2.0, seed=0)
    pml = _pml(x, y)
    assert 0.1 < pml["mean_average_precision_at_r"] < 0.9  # Non-trivial values.
    _assert_matches_pml(_ours(x, y, backend=backend), pml)


@needs_faiss
def test_matches_accuracy_calculator_on_real_embeddings(
    fashion: tuple[torch.Tensor, torch.Tensor],
) -> None:
    x, y = fashion
    result = _ours(x, y)
    _assert_matches_pml(result, _pml(x, y))
    # Query != reference on real data, too.
    _assert_matches_pml(
        _ours(x[:800], y[:800], x[800:], y[800:]), _pml(x[:800], y[:800], x[800:], y[800:])
    )


def _exact_ties(n: int, d: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit vectors with four entries of +-0.5: every dot product is a multiple of 0.25 and
    exact in float32 whatever the summation order, so ties are real ties on every backend
    (duplicates of arbitrary vectors can differ in the last bit inside a blocked GEMM)."""
    g = torch.Generator().manual_seed(seed)
    positions = torch.rand(n, d, generator=g).argsort(dim=1)[:, :4]
    signs = torch.randint(0, 2, (n, 4), generator=g).float() * 2 - 1
    x = torch.zeros(n, d).scatter_(1, positions, 0.5 * signs)
    return torch.cat([x, x[: n // 4]]), torch.randint(0, classes, (n + n // 4,), generator=g)


@needs_faiss
@pytest.mark.parametrize("n", [300, 800])  # max_bin_count below / above FAISS's reservoir switch
def test_matches_accuracy_calculator_with_ties(n: int) -> None:
    # Massive ties plus duplicated embeddings with different labels: the order among tied items
    # decides the metrics, and it must be AccuracyCalculator's (lowest index first).
    x, y = _exact_ties(n, 12, 4, seed=1)
    pml = _pml(x, y)
    split = _pml(x[:100], y[:100], x[100:], y[100:])
    for backend in CPU_BACKENDS:
        _assert_matches_pml(_ours(x, y, backend=backend), pml, tol=1e-12)
        _assert_matches_pml(
            _ours(x[:100], y[:100], x[100:], y[100:], backend=backend), split, tol=1e-12
        )


@needs_faiss
def test_matches_accuracy_calculator_with_lone_query_labels() -> None:
    x, y = _clustered(600, 24, 6, noise=1.5, seed=3)
    y = y.clone()
    y[0], y[1] = 100, 101  # Labels seen once: lone in leave-one-out.
    result = _ours(x, y)
    _assert_matches_pml(result, _pml(x, y))
    assert result.info["num_lone_queries"] == 2
    # Query != reference: query labels absent from the reference set are lone as well.
    yq = y[:200].clone()
    yq[:10] = 55
    result = _ours(x[:200], yq, x[200:], y[200:])
    _assert_matches_pml(result, _pml(x[:200], yq, x[200:], y[200:]))
    assert result.info["num_lone_queries"] == 10


@needs_faiss
def test_matches_accuracy_calculator_query_not_reference() -> None:
    x, y = _clustered(1500, 32, 12, noise=2.0, seed=4)
    for backend in CPU_BACKENDS:
        result = _ours(x[:500], y[:500], x[500:], y[500:], backend=backend)
        _assert_matches_pml(result, _pml(x[:500], y[:500], x[500:], y[500:]))


@needs_faiss
def test_per_class_matches_accuracy_calculator() -> None:
    x, y = _clustered(800, 16, 5, noise=2.0, seed=5)
    result = _ours(x, y)
    calc = AccuracyCalculator(
        include=PML_METRICS[:3], k="max_bin_count", device=CPU, return_per_class=True
    )
    per_class = calc.get_accuracy(x, y)
    for name in PML_METRICS[:3]:
        ours = [result.per_class[name][label] for label in range(5)]
        np.testing.assert_allclose(ours, per_class[name], atol=1e-6)


def test_recall_at_k_definition() -> None:
    x, y = _clustered(400, 16, 8, noise=3.0, seed=6)
    result = RetrievalEvaluator(recall_at=(1, 3, 10), knn_protocols=(), nmi=False).evaluate(x, y)
    sims = x @ x.T
    sims.fill_diagonal_(-math.inf)
    top = sims.topk(10, dim=1).indices
    for k in (1, 3, 10):
        expected = (y[top[:, :k]] == y[:, None]).any(dim=1).double().mean().item()
        assert result.metrics[f"recall_at_{k}"] == pytest.approx(expected, abs=1e-9)
    assert result.metrics["recall_at_1"] == result.metrics["precision_at_1"]


@pytest.mark.parametrize("protocol", ["dino", "lightly", (7, 0.5)])
def test_knn_matches_lightly_knn_predict(
    fashion: tuple[torch.Tensor, torch.Tensor], protocol: str | tuple[int, float]
) -> None:
    x, y = fashion
    query, bank = x[:500], x[500:]
    k, t = KNN_PROTOCOLS[protocol] if isinstance(protocol, str) else protocol
    pred = knn_predict(query, bank.T, y[500:], num_classes=10, knn_k=k, knn_t=t)
    name = protocol if isinstance(protocol, str) else f"k{k}_t{t:g}"
    for backend in CPU_BACKENDS:
        evaluator = RetrievalEvaluator(backend=backend, knn_protocols=(protocol,), nmi=False)
        result = evaluator.evaluate(query, y[:500], bank, y[500:])
        top1 = (pred[:, 0] == y[:500]).double().mean().item()
        top5 = (pred[:, :5] == y[:500, None]).any(dim=1).double().mean().item()
        assert result.metrics[f"knn_top1_{name}"] == top1
        assert result.metrics[f"knn_top5_{name}"] == top5


def test_knn_vote_equals_knn_predict_with_tied_votes() -> None:
    # Duplicated bank items with different labels give exactly tied class scores.
    g = torch.Generator().manual_seed(7)
    base = F.normalize(torch.randn(30, 8, generator=g), dim=1)
    bank = torch.cat([base, base])
    bank_labels = torch.cat([torch.zeros(30), torch.ones(30)]).long()
    query = F.normalize(base + 0.01 * torch.randn(30, 8, generator=g), dim=1)
    pred = knn_predict(query, bank.T, bank_labels, num_classes=3, knn_k=2, knn_t=0.1)
    sims, idx = (query @ bank.T).topk(2, dim=1)
    ours = knn_vote(sims, bank_labels[idx], 3, 0.1)
    assert torch.equal(ours, pred)


def test_leave_one_out_knn_excludes_the_query() -> None:
    x, y = _clustered(300, 16, 4, noise=1.0, seed=8)
    loo = RetrievalEvaluator(knn_protocols=((5, 0.1),), nmi=False, backend="torch").evaluate(x, y)
    sims = x @ x.T
    sims.fill_diagonal_(-math.inf)
    s, i = sims.topk(5, dim=1)
    pred = knn_vote(s, y[i], 4, 0.1)
    assert loo.metrics["knn_top1_k5_t0.1"] == (pred[:, 0] == y).double().mean().item()
    assert not (loo.neighbors == torch.arange(300)[:, None]).any()


@needs_faiss
def test_knn_func_adapter_reproduces_accuracy_calculator(
    fashion: tuple[torch.Tensor, torch.Tensor],
) -> None:
    x, y = fashion
    x, y = x[:1500], y[:1500]
    reference = _pml(x, y)  # pytorch-metric-learning's own FaissKNN (IndexFlatL2).
    for metric in ("l2", "ip"):
        adapted = _pml(x, y, knn_func=make_knn_func(backend="faiss", metric=metric))
        _assert_matches_pml_dict(adapted, reference, tol=1e-6)
    split = _pml(x[:500], y[:500], x[500:], y[500:])
    adapted = _pml(x[:500], y[:500], x[500:], y[500:], knn_func=make_knn_func(backend="faiss"))
    _assert_matches_pml_dict(adapted, split, tol=1e-6)
    # Without FAISS: torch's GEMM rounds differently from FAISS's, which can swap two items
    # whose similarities differ in the last bit (here one swap among 1500 queries).
    adapted = _pml(x, y, knn_func=make_knn_func(backend="torch"))
    _assert_matches_pml_dict(adapted, reference, tol=1e-5)


def test_evaluator_equals_accuracy_calculator_on_the_same_search(
    fashion: tuple[torch.Tensor, torch.Tensor],
) -> None:
    # The same search on both sides (our torch backend, no FAISS): what is compared is the
    # metric definitions. (Chunk shapes and re-normalisation can still move a similarity by one
    # ulp, hence 1e-6 rather than 0.)
    x, y = fashion
    knn_func = make_knn_func(backend="torch", metric="ip")
    pml = _pml(x, y, knn_func=knn_func)
    _assert_matches_pml(_ours(x, y, backend="torch"), pml)
    pml = _pml(x[:700], y[:700], x[700:], y[700:], knn_func=knn_func)
    _assert_matches_pml(_ours(x[:700], y[:700], x[700:], y[700:], backend="torch"), pml)


def _assert_matches_pml_dict(a: dict[str, float], b: dict[str, float], tol: float) -> None:
    for name in PML_METRICS:
        assert a[name] == pytest.approx(b[name], abs=tol), name


def test_knn_func_works_without_faiss_and_returns_like_faiss_knn() -> None:
    x, _ = _clustered(200, 8, 3, noise=1.0, seed=9)
    dists, idx = make_knn_func(backend="torch")(x, 4, x, True)
    assert dists.shape == idx.shape == (200, 4)
    assert not (idx == torch.arange(200)[:, None]).any()
    assert (dists[:, 1:] >= dists[:, :-1]).all()  # Squared L2, nearest first.
    sims, _ = make_knn_func(backend="torch", metric="ip")(x, 4, x, False)
    assert (sims[:, 0] > 0.999).all()  # The query itself, similarity 1.


def test_result_fields_nmi_and_json() -> None:
    x, y = _clustered(600, 16, 6, noise=0.3, seed=10)
    result = RetrievalEvaluator(backend="torch").evaluate(x, y)
    expected = set(PML_METRICS) | {f"recall_at_{k}" for k in (1, 2, 4, 8)}
    expected |= {f"knn_top{t}_{p}" for t in (1, 5) for p in ("dino", "lightly")} | {"nmi", "ami"}
    assert set(result.metrics) == expected
    assert all(isinstance(v, float) and math.isfinite(v) for v in result.metrics.values())
    assert result.metrics["nmi"] > 0.95 and result.metrics["ami"] > 0.95  # Well separated.
    assert result.neighbors.shape == (600, 8) and result.neighbors.dtype == torch.int64
    assert torch.equal(result.neighbor_labels, y[result.neighbors])
    assert (result.neighbor_similarities[:, :-1] >= result.neighbor_similarities[:, 1:]).all()
    assert set(result.per_class) == {
        "precision_at_1",
        "r_precision",
        "mean_average_precision_at_r",
        "knn_top1_dino",
    }
    assert set(result.per_class["precision_at_1"]) == set(range(6))
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["metrics"] == result.metrics
    assert payload["per_class"]["r_precision"].keys() == {str(c) for c in range(6)}
    assert "neighbors" in result.to_dict(include_neighbors=True)


def test_numpy_inputs_arbitrary_labels_and_chunking() -> None:
    x, y = _clustered(500, 16, 5, noise=2.0, seed=11)
    labels = (y * 7 + 3).numpy()  # Non-contiguous label values.
    evaluator = RetrievalEvaluator(backend="torch", nmi=False, knn_protocols=("dino",))
    whole = evaluator.evaluate(x.numpy(), labels)
    chunked = RetrievalEvaluator(
        backend="torch", nmi=False, knn_protocols=("dino",), chunk_size=37
    ).evaluate(x, torch.from_numpy(labels))
    for name, value in whole.metrics.items():
        assert chunked.metrics[name] == pytest.approx(value, abs=1e-9)
    assert set(whole.per_class["precision_at_1"]) == {c * 7 + 3 for c in range(5)}
    # Unnormalised embeddings: cosine is scale-invariant.
    scaled = evaluator.evaluate(x * torch.rand(500, 1) * 10 + 0.0, labels)
    assert scaled.metrics["precision_at_1"] == pytest.approx(whole.metrics["precision_at_1"])


def test_retrieval_false_gives_knn_only() -> None:
    x, y = _clustered(300, 16, 3, noise=1.0, seed=12)
    result = RetrievalEvaluator(retrieval=False, nmi=False).evaluate(
        x[:100], y[:100], x[100:], y[100:]
    )
    assert set(result.metrics) == {
        "knn_top1_dino",
        "knn_top5_dino",
        "knn_top1_lightly",
        "knn_top5_lightly",
    }


def test_bad_input_errors() -> None:
    x, y = _clustered(50, 16, 3, noise=1.0, seed=13)
    evaluator = RetrievalEvaluator(knn_protocols=(), nmi=False, backend="torch")
    with pytest.raises(ValueError, match=r"differ in dimension: \(50, 16\) vs \(50, 8\)"):
        evaluator.evaluate(x, y, x[:, :8], y)
    with pytest.raises(
        ValueError, match="query_labels has 49 entries but the embeddings have 50 rows"
    ):
        evaluator.evaluate(x, y[:49])
    with pytest.raises(ValueError, match="reference_labels has 10 entries.*40 rows"):
        evaluator.evaluate(x[:10], y[:10], x[10:], y[:10])
    nan = x.clone()
    nan[3, 0] = float("nan")
    with pytest.raises(ValueError, match="query_embeddings contains NaN or inf.*row 3"):
        evaluator.evaluate(nan, y)
    with pytest.raises(ValueError, match="reference_embeddings contains NaN"):
        evaluator.evaluate(x, y, nan, y)
    with pytest.raises(ValueError, match=r"empty set: query_embeddings has shape \(0, 16\)"):
        evaluator.evaluate(x[:0], y[:0], x, y)
    with pytest.raises(
        ValueError, match="Recall@8 needs at least 8 reference items, but there are 5"
    ):
        evaluator.evaluate(x[:10], y[:10], x[10:15], y[10:15])
    with pytest.raises(ValueError, match="Recall@8.*there are 5.*minus the query itself"):
        evaluator.evaluate(x[:6], y[:6])
    with pytest.raises(ValueError, match="'lightly' uses k=200 but there are only 49"):
        RetrievalEvaluator(nmi=False).evaluate(x, y)
    with pytest.raises(ValueError, match="no query has another reference item"):
        evaluator.evaluate(x[:10], torch.arange(10), x[10:], torch.arange(10, 50))
    with pytest.raises(ValueError, match="together"):
        evaluator.evaluate(x, y, x)
    with pytest.raises(ValueError, match="integer class labels"):
        evaluator.evaluate(x, y.float() + 0.5)
    with pytest.raises(ValueError, match="unknown kNN protocol 'simclr'"):
        RetrievalEvaluator(knn_protocols=("simclr",))
    with pytest.raises(ValueError, match=r"\(k >= 1, T > 0\)"):
        RetrievalEvaluator(knn_protocols=((10, 0.0),))
    with pytest.raises(ValueError, match="recall_at values"):
        RetrievalEvaluator(recall_at=(0, 1))
    with pytest.raises(ValueError, match=r"num_clusters=60 exceeds the number of queries \(50\)"):
        RetrievalEvaluator(knn_protocols=(), num_clusters=60).evaluate(x, y)


def test_progress_bar_is_shown_on_request(capsys: pytest.CaptureFixture[str]) -> None:
    x, y = _clustered(400, 16, 4, noise=1.0, seed=11)
    RetrievalEvaluator(nmi=False).evaluate(x, y)
    assert "kNN search" not in capsys.readouterr().err
    for backend in CPU_BACKENDS:
        RetrievalEvaluator(nmi=False, backend=backend, progress=True).evaluate(x, y)
        assert "kNN search" in capsys.readouterr().err, backend
