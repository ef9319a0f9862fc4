"""Tests of the evaluation package.

Agreement tests (ours vs pytorch-metric-learning's ``AccuracyCalculator``, vs lightly's
``knn_predict``, backend vs backend) run on embeddings whose dot products are exact in float32
(:mod:`benchlib.synthetic`). They used to run on random floats and failed on AMD EPYC (AVX2,
no AVX-512) CI machines: MAP@R 0.40778157 vs 0.40778004. Random floats produce near-ties, pairs of
items whose similarities to a query differ in the last bit; FAISS's and torch's GEMM kernels sum in
different orders, so they round such a pair differently, rank it in a different order, and the
metrics move in the 6th digit. Which pairs swap depends on the CPU's kernels, so the tests passed on
Intel by luck. With exact arithmetic every backend computes the same bits, so the comparisons are
exact (1e-12, far below the 1e-6 a single swap causes) while the data still has class structure,
real exact ties and varied ranks.
"""

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
from torch import Tensor

from benchlib.synthetic import clustered, exact_unit, has_near_ties
from lightly_grpo import index
from lightly_grpo.data import load_fashion_mnist
from lightly_grpo.evaluation import (
    KNN_PROTOCOLS,
    RETRIEVAL_METRICS,
    IndexKNN,
    MetricSpec,
    RetrievalEvaluator,
    RetrievalResult,
    evaluate_against_bank,
    knn_vote,
    make_knn_func,
    metric_spec,
    register_metric,
)
from lightly_grpo.evaluation.metrics import KNNChunk, RetrievalChunk

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
    """Exact unit embeddings around random class centres (see the module docstring)."""
    return clustered(n, d, classes, noise, seed)


@pytest.fixture(scope="module")
def fashion() -> tuple[torch.Tensor, torch.Tensor]:
    """PCA-64 of 3,000 Fashion-MNIST test images, rounded to exact unit vectors, and labels."""
    images, labels = load_fashion_mnist(split="test")
    pixels = images[:3000].reshape(3000, -1).astype(np.float32) / 255.0
    emb = PCA(n_components=64, random_state=0).fit_transform(pixels).astype(np.float32)
    return exact_unit(torch.from_numpy(emb)), torch.from_numpy(labels[:3000])


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


def _assert_matches_pml(ours: RetrievalResult, pml: dict[str, float], tol: float = 1e-12) -> None:
    """Equal up to the order of the final float64 average (a swapped pair moves ~1e-6)."""
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
    """Lone query labels are left out as AccuracyCalculator leaves them out.

    This test failed on AMD EPYC CI machines (MAP@R 0.40778157 vs 0.40778004, tol 1e-6) when it
    ran on random floats: a near-tie, two items whose similarities differ in the last bit, was
    ranked one way by our FAISS inner-product search and the other way by AccuracyCalculator's
    FAISS L2 search, because the two GEMMs sum in different orders and so round differently on
    that CPU. Exact embeddings (module docstring) make both searches compute the same bits, so
    the comparison holds to 1e-12 on every CPU; near-ties are covered on their own by
    test_near_ties_match_the_reference_on_the_same_neighbour_order.
    """
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
    # Exact data: the only way to disagree with knn_predict's topk would be an exact tie at the
    # k-th place (which topk may break either way); this data has none, so equality is exact.
    top = (query @ bank.T).topk(k + 1, dim=1).values
    assert not bool((top[:, k - 1] == top[:, k]).any())
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
        _assert_matches_pml_dict(adapted, reference, tol=1e-12)
    split = _pml(x[:500], y[:500], x[500:], y[500:])
    adapted = _pml(x[:500], y[:500], x[500:], y[500:], knn_func=make_knn_func(backend="faiss"))
    _assert_matches_pml_dict(adapted, split, tol=1e-12)
    # Without FAISS: exact data, so torch's GEMM gives FAISS's bits and the same ranking.
    adapted = _pml(x, y, knn_func=make_knn_func(backend="torch"))
    _assert_matches_pml_dict(adapted, reference, tol=1e-12)


class _NormalisedKNN(IndexKNN):
    """Our knn_func on ``F.normalize``d inputs: the exact tensors the evaluator searches."""

    def __call__(
        self,
        query: Tensor,
        k: int,
        reference: Tensor | None = None,
        ref_includes_query: bool = False,
    ) -> tuple[Tensor, Tensor]:
        ref = None if reference is None else F.normalize(reference, dim=1)
        return super().__call__(F.normalize(query, dim=1), k, ref, ref_includes_query)


def test_evaluator_equals_accuracy_calculator_on_the_same_search(
    fashion: tuple[torch.Tensor, torch.Tensor],
) -> None:
    # The same search on both sides (our torch backend, same chunks, same normalised inputs):
    # what is compared is the metric definitions, so they must agree exactly.
    x, y = fashion
    knn_func = _NormalisedKNN(backend="torch", chunk_size=256, metric="ip")
    pml = _pml(x, y, knn_func=knn_func)
    _assert_matches_pml(_ours_chunked(x, y, backend="torch"), pml)
    pml = _pml(x[:700], y[:700], x[700:], y[700:], knn_func=knn_func)
    _assert_matches_pml(_ours_chunked(x[:700], y[:700], x[700:], y[700:], backend="torch"), pml)


def _ours_chunked(
    query: Tensor,
    query_labels: Tensor,
    reference: Tensor | None = None,
    reference_labels: Tensor | None = None,
    backend: str = "torch",
) -> RetrievalResult:
    evaluator = RetrievalEvaluator(backend=backend, chunk_size=256, nmi=False, knn_protocols=())
    return evaluator.evaluate(query, query_labels, reference, reference_labels)


@needs_faiss
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_near_ties_match_the_reference_on_the_same_neighbour_order(backend: str) -> None:
    """Regression test for the AMD EPYC failure of the AccuracyCalculator agreement tests.

    Near-copies of exact embeddings, perturbed by ~1e-7 and given other labels, create near-ties:
    similarities that differ in the last bits, whose order depends on how the GEMM rounds (the CPU's
    kernels, FAISS vs torch, the block shapes). Comparing our metrics with AccuracyCalculator's
    default FAISS L2 search on such data compares rounding, which is what broke on AMD (on this data
    P@1 then differs by ~3e-3 on every backend). Instead, (1) AccuracyCalculator runs on the *same*
    neighbour order (our search, same backend, same chunks, same normalised inputs) and must give
    our metrics to 1e-12, whatever the CPU; a single swapped pair would move MAP@R by ~1e-6. (2) The
    exact-arithmetic variant (the unperturbed embeddings, every similarity exact) must match
    AccuracyCalculator's own FAISS search to 1e-12.
    """
    x, y = _clustered(500, 24, 6, noise=1.5, seed=3)
    y = y.clone()
    y[0], y[1] = 100, 101  # Lone labels too.
    g = torch.Generator().manual_seed(0)
    copies = x[:200] + 1e-7 * torch.randn(200, x.shape[1], generator=g)
    near = torch.cat([x, copies])
    near_labels = torch.cat([y, (y[:200] + 1) % 6])  # A swap with the original changes metrics.
    normalised = F.normalize(near, dim=1)
    max_bin = int(torch.bincount(near_labels).max())
    assert has_near_ties(normalised @ normalised.T, max_bin)  # The hazard is really there.

    knn_func = _NormalisedKNN(backend=backend, chunk_size=256, metric="ip")
    pml = _pml(near, near_labels, knn_func=knn_func)
    _assert_matches_pml(_ours_chunked(near, near_labels, backend=backend), pml)
    split = _pml(near[:300], near_labels[:300], near[300:], near_labels[300:], knn_func=knn_func)
    ours = _ours_chunked(near[:300], near_labels[:300], near[300:], near_labels[300:], backend)
    _assert_matches_pml(ours, split)

    # The exact-arithmetic variant against AccuracyCalculator's own FAISS L2 search.
    _assert_matches_pml(_ours(x, y, backend=backend), _pml(x, y))


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
    with pytest.raises(ValueError, match=r"differ in dimension: \(50, 20\) vs \(50, 8\)"):
        evaluator.evaluate(x, y, x[:, :8], y)
    with pytest.raises(
        ValueError, match="query_labels has 49 entries but the embeddings have 50 rows"
    ):
        evaluator.evaluate(x, y[:49])
    with pytest.raises(ValueError, match="reference_labels has 10 entries.*40 rows"):
        evaluator.evaluate(x[:10], y[:10], x[10:], y[:10])
    nan = x.clone()
    nan[3, 0] = float("nan")
    with pytest.raises(ValueError, match="query_embeddings contains NaN or inf.*first at row 3"):
        evaluator.evaluate(nan, y)
    with pytest.raises(ValueError, match="reference_embeddings contains NaN"):
        evaluator.evaluate(x, y, nan, y)
    with pytest.raises(ValueError, match=r"empty set: query_embeddings has shape \(0, 20\)"):
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


def test_metric_specs_cover_every_emitted_key() -> None:
    evaluator = RetrievalEvaluator(recall_at=(1, 4), knn_protocols=("dino", "lightly", (7, 0.5)))
    names = evaluator.metric_names()
    assert {"recall_at_4", "knn_top1_dino", "knn_top5_lightly", "knn_top1_k7_t0.5"} <= set(names)
    for name in names:
        spec = metric_spec(name)
        assert spec is not None and spec.name == name and spec.higher_is_better, name
    assert metric_spec("knn_top1_dino").display_name == "kNN top-1 (k=20, T=0.07)"  # type: ignore[union-attr]
    assert metric_spec("knn_top5_k7_t0.5").display_name == "kNN top-5 (k=7, T=0.5)"  # type: ignore[union-attr]
    assert metric_spec("recall_at_4").needs == "retrieval"  # type: ignore[union-attr]
    assert metric_spec("nmi").needs == "clusters"  # type: ignore[union-attr]
    assert metric_spec("recall_at_0") is None and metric_spec("loss") is None
    assert KNN_PROTOCOLS["dino"] == (20, 0.07) and KNN_PROTOCOLS["lightly"] == (200, 0.1)


def test_registered_functions_compute_the_documented_values() -> None:
    # One query with R = 2 and results [hit, miss, hit]: AP@R counts only the first R results.
    chunk = RetrievalChunk(
        same=torch.tensor([[True, False, True]]),
        relevant=torch.tensor([2]),
        max_bin=3,
        ranks=torch.arange(1, 4, dtype=torch.float64),
    )
    values = {name: float(metric_spec(name).fn(chunk)[0]) for name in RETRIEVAL_METRICS}  # type: ignore[union-attr]
    assert values == {
        "precision_at_1": 1.0,
        "r_precision": 0.5,
        "mean_average_precision_at_r": 0.5,
        "mean_average_precision": (1.0 + 2 / 3) / 2,
    }
    assert float(metric_spec("recall_at_2").fn(chunk)[0]) == 1.0  # type: ignore[union-attr]
    votes = KNNChunk(predictions=torch.tensor([[2, 0, 1], [1, 2, 0]]), targets=torch.tensor([0, 1]))
    assert metric_spec("knn_top1_dino").fn(votes).tolist() == [0.0, 1.0]  # type: ignore[union-attr]
    assert metric_spec("knn_top2_dino").fn(votes).tolist() == [1.0, 1.0]  # type: ignore[union-attr]


def test_register_metric_rejects_taken_names_and_unknown_needs() -> None:
    spec = metric_spec("nmi")
    assert spec is not None
    with pytest.raises(ValueError, match="'nmi' is already registered"):
        register_metric(spec)
    with pytest.raises(ValueError, match="needs must be"):
        register_metric(MetricSpec("x", "X", True, "pixels", lambda _: 0.0))  # type: ignore[arg-type]


def test_evaluate_against_bank_merges_knn_and_leave_one_out() -> None:
    x, y = _clustered(600, 16, 4, noise=1.5, seed=14)
    test, test_y, bank, bank_y = x[:200], y[:200], x[200:], y[200:]
    evaluator = RetrievalEvaluator(knn_protocols=("dino",), backend="torch", recall_at=(1, 4))
    result = evaluate_against_bank(test, test_y, bank, bank_y, evaluator)
    knn = evaluator.replace(retrieval=False, nmi=False).evaluate(test, test_y, bank, bank_y)
    loo = evaluator.replace(knn_protocols=()).evaluate(test, test_y)
    assert result.metrics == {**loo.metrics, **knn.metrics}
    assert list(result.metrics) == evaluator.metric_names()
    assert result.per_class["knn_top1_dino"] == knn.per_class["knn_top1_dino"]
    assert (
        result.per_class["mean_average_precision_at_r"]
        == loo.per_class["mean_average_precision_at_r"]
    )
    assert torch.equal(result.neighbors, loo.neighbors) and int(result.neighbors.max()) < 200
    assert result.info["knn"]["num_references"] == 400
    assert result.info["leave_one_out"]["leave_one_out"] is True
    assert result.info["metric_sources"]["knn_top1_dino"] == "knn"
    assert result.info["metric_sources"]["nmi"] == "leave_one_out"
    # kNN against the bank differs from kNN leave-one-out within the test split.
    assert (
        knn.metrics != evaluator.replace(retrieval=False, nmi=False).evaluate(test, test_y).metrics
    )
    no_knn = evaluate_against_bank(test, test_y, bank, bank_y, evaluator.replace(knn_protocols=()))
    assert "knn" not in no_knn.info and no_knn.metrics == loo.metrics


def test_replace_keeps_settings_and_rejects_unknown_arguments() -> None:
    evaluator = RetrievalEvaluator(recall_at=(2,), knn_protocols=((5, 0.2),), seed=4)
    copy = evaluator.replace(nmi=False)
    assert (copy.recall_at, copy.knn_protocols, copy.seed, copy.nmi) == (
        (2,),
        ((5, 0.2),),
        4,
        False,
    )
    with pytest.raises(ValueError, match=r"unknown RetrievalEvaluator arguments: \['k'\]"):
        evaluator.replace(k=3)
