"""Tests of the clustering metrics (ACC, NMI, ARI), the k-means baseline and neighbour purity.

Expected ACC values come from the definition (the best one-to-one map of clusters to classes),
either worked out by hand or by trying every such map, never from the Hungarian solver itself.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lightly_grpo import index
from lightly_grpo.evaluation.clustering import (
    clustering_accuracy,
    clustering_scores,
    kmeans_clustering_scores,
    neighbor_purity,
)

CPU_BACKENDS = [b for b in ("faiss", "tiled", "torch") if b in index.available_backends()]


def brute_force_acc(predictions: list[int], labels: list[int]) -> float:
    """ACC by trying every one-to-one map between the present clusters and classes."""
    clusters, classes = sorted(set(predictions)), sorted(set(labels))
    best = 0
    # Injective maps from the smaller side into the larger one cover every matching that can
    # be maximal (a partial one never beats its extension, counts being non-negative).
    if len(clusters) <= len(classes):
        for image in itertools.permutations(classes, len(clusters)):
            mapping = dict(zip(clusters, image, strict=True))
            best = max(best, sum(mapping[p] == t for p, t in zip(predictions, labels, strict=True)))
    else:
        for image in itertools.permutations(clusters, len(classes)):
            mapping = dict(zip(image, classes, strict=True))
            best = max(
                best, sum(mapping.get(p) == t for p, t in zip(predictions, labels, strict=True))
            )
    return best / len(labels)


def blobs(
    num_per_class: int, num_classes: int, dim: int, noise: float, seed: int
) -> tuple[Tensor, Tensor]:
    """Tight Gaussian blobs around orthogonal unit directions, projected onto the sphere."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.eye(dim)[:num_classes]
    labels = torch.arange(num_classes).repeat_interleave(num_per_class)
    x = centers[labels] + noise * torch.randn(len(labels), dim, generator=gen)
    return F.normalize(x, dim=1), labels


# --- clustering_accuracy / clustering_scores ---------------------------------------------------


def test_perfect_clustering_with_permuted_ids_scores_one() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    renaming = {0: 7, 1: 3, 2: 0}  # Cluster ids are arbitrary, even sparse.
    predictions = np.array([renaming[int(v)] for v in labels])
    scores = clustering_scores(predictions, labels)
    assert set(scores) == {"cluster_acc", "nmi", "ari"}
    assert scores["cluster_acc"] == 1.0
    assert scores["nmi"] == pytest.approx(1.0)
    assert scores["ari"] == pytest.approx(1.0)
    assert all(isinstance(v, float) for v in scores.values())


def test_known_contingency_by_hand() -> None:
    # Cluster 0 = {label 1, label 1}, cluster 1 = {0, 0, 2}, cluster 2 = {2}.
    # Best map: 0->1 (2 right), 1->0 (2 right), 2->2 (1 right): 5 of 6.
    predictions = [0, 0, 1, 1, 1, 2]
    labels = [1, 1, 0, 0, 2, 2]
    expected = (2 + 2 + 1) / 6
    assert clustering_accuracy(torch.tensor(predictions), torch.tensor(labels)) == pytest.approx(
        expected
    )
    assert clustering_accuracy(np.array(predictions), np.array(labels)) == pytest.approx(expected)
    assert brute_force_acc(predictions, labels) == pytest.approx(expected)


def test_one_to_one_not_majority_vote() -> None:
    # Cluster 0 = {0, 0, 0}, cluster 1 = {0, 0, 1}. A majority vote would map both to class 0
    # (5 of 6, that is cluster purity); one-to-one allows only one of them: 0 -> 0 (3 right)
    # and 1 -> 1 (1 right) beat 0 -> 1 (0) and 1 -> 0 (2).
    predictions = [0, 0, 0, 1, 1, 1]
    labels = [0, 0, 0, 0, 0, 1]
    assert clustering_accuracy(np.array(predictions), np.array(labels)) == pytest.approx(4 / 6)


def test_more_clusters_than_classes() -> None:
    # Clusters 0, 1 hold label 0 twice each; clusters 2, 3 hold label 1 once each. Only one of
    # 0/1 can take class 0 and one of 2/3 class 1: 2 + 1 = 3 of 6; the rest count as wrong.
    predictions = np.array([0, 0, 1, 1, 2, 3])
    labels = np.array([0, 0, 0, 0, 1, 1])
    assert clustering_accuracy(predictions, labels) == pytest.approx(3 / 6)
    # Every item in its own cluster: only one item per class can be right.
    singletons = np.arange(6)
    assert clustering_accuracy(singletons, labels) == pytest.approx(2 / 6)


def test_fewer_clusters_than_classes() -> None:
    # One cluster can match only one class: the largest one.
    labels = np.array([0, 1, 1, 2, 2, 2, 2])
    assert clustering_accuracy(np.zeros(7, dtype=np.int64), labels) == pytest.approx(4 / 7)


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_on_random_rectangular_tables(seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_clusters, num_classes = rng.integers(1, 6, size=2)
    n = 25
    predictions = rng.integers(0, num_clusters, size=n)
    labels = rng.integers(0, num_classes, size=n)
    expected = brute_force_acc(predictions.tolist(), labels.tolist())
    assert clustering_accuracy(predictions, labels) == pytest.approx(expected)
    assert clustering_scores(predictions, labels)["cluster_acc"] == pytest.approx(expected)


def test_unrelated_clustering_has_low_nmi_and_ari() -> None:
    # Clusters split every class exactly in half: no information about the labels.
    labels = np.repeat([0, 1, 2, 3], 10)
    predictions = np.tile([0, 1], 20)
    scores = clustering_scores(predictions, labels)
    assert scores["nmi"] == pytest.approx(0.0, abs=1e-12)
    assert scores["ari"] < 0.0  # Worse than chance once adjusted.
    assert scores["cluster_acc"] == pytest.approx(10 / 40)  # Two clusters, 5 right each.


@pytest.mark.parametrize(
    ("predictions", "labels", "match"),
    [
        (np.array([], dtype=np.int64), np.array([], dtype=np.int64), "empty"),
        (np.array([0, 1, 2]), np.array([0, 1]), "3 predictions vs 2 labels"),
        (np.array([0.0, 1.5]), np.array([0, 1]), "predictions must hold integers.*float"),
        (np.array([0, 1]), torch.tensor([0.0, 1.0]), "labels must hold integers.*float"),
        (np.array([True, False]), np.array([0, 1]), "predictions must hold integers.*bool"),
        (np.array([0, -1, 2]), np.array([0, 1, 2]), "non-negative.*-1 at position 1"),
        (np.array([0, 1]), np.array([-3, 1]), "labels must hold non-negative"),
        (np.zeros((2, 2), dtype=np.int64), np.zeros(4, dtype=np.int64), r"1-D.*\(2, 2\)"),
        (np.array(3), np.array([3]), r"predictions must be 1-D.*\(\)"),
    ],
)
def test_accuracy_and_scores_reject_bad_input(
    predictions: np.ndarray | Tensor, labels: np.ndarray | Tensor, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        clustering_accuracy(predictions, labels)
    with pytest.raises(ValueError, match=match):
        clustering_scores(predictions, labels)


# --- kmeans_clustering_scores ------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", *CPU_BACKENDS])
def test_kmeans_on_separated_blobs_is_perfect(backend: str) -> None:
    x, labels = blobs(40, 2, dim=8, noise=0.05, seed=0)
    scores = kmeans_clustering_scores(x, labels + 5, backend=backend)  # Label ids arbitrary.
    assert scores["cluster_acc"] == 1.0
    assert scores["nmi"] == pytest.approx(1.0)
    assert scores["ari"] == pytest.approx(1.0)


def test_kmeans_accepts_numpy_and_unnormalised_input() -> None:
    x, labels = blobs(30, 3, dim=6, noise=0.05, seed=1)
    scale = torch.linspace(0.5, 20.0, len(x))[:, None]  # Cosine k-means ignores the norms.
    scores = kmeans_clustering_scores((x * scale).numpy(), labels.numpy(), seed=3)
    assert scores["cluster_acc"] == 1.0


def test_kmeans_num_clusters_overrides_the_label_count() -> None:
    # One cluster for two balanced classes: ACC is the larger class share, NMI and ARI are 0.
    x, labels = blobs(25, 2, dim=4, noise=0.05, seed=2)
    scores = kmeans_clustering_scores(x, labels, num_clusters=1)
    assert scores["cluster_acc"] == pytest.approx(0.5)
    assert scores["nmi"] == pytest.approx(0.0, abs=1e-12)
    assert scores["ari"] == pytest.approx(0.0, abs=1e-12)


def test_kmeans_rejects_bad_input() -> None:
    x, labels = blobs(10, 2, dim=4, noise=0.05, seed=0)
    with pytest.raises(ValueError, match=r"2-D.*\(20,\)"):
        kmeans_clustering_scores(x[:, 0], labels)
    with pytest.raises(ValueError, match="19 entries.*20 rows"):
        kmeans_clustering_scores(x, labels[:-1])
    with pytest.raises(ValueError, match="num_clusters"):
        kmeans_clustering_scores(x, labels, num_clusters=21)
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="embeddings contains NaN"):
        kmeans_clustering_scores(bad, labels)


# --- neighbor_purity ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", *CPU_BACKENDS])
def test_purity_is_one_for_separated_blobs(backend: str) -> None:
    x, labels = blobs(30, 3, dim=8, noise=0.05, seed=0)
    assert neighbor_purity(x, labels, k=20, backend=backend) == 1.0


def test_purity_is_about_one_over_c_for_random_labels() -> None:
    gen = torch.Generator().manual_seed(0)
    num_classes, n = 4, 400
    x = torch.randn(n, 16, generator=gen)
    labels = torch.randint(num_classes, (n,), generator=gen)
    purity = neighbor_purity(x, labels, k=20)
    assert abs(purity - 1 / num_classes) < 0.08


def test_purity_matches_a_direct_count_and_excludes_self() -> None:
    # Four points on a line of angles: each point's nearest neighbour is an adjacent angle.
    angles = torch.tensor([0.0, 0.1, 1.5, 1.6])
    x = torch.stack([angles.cos(), angles.sin()], dim=1)
    labels = torch.tensor([0, 0, 1, 0])
    # k=1 neighbours: 0->1 (same), 1->0 (same), 2->3 (diff), 3->2 (diff): 2 of 4.
    assert neighbor_purity(x, labels, k=1) == pytest.approx(0.5)
    # Even with k = N - 1 the item itself never counts: item 2 sees three other labels 0.
    # Shares: 2/3, 2/3, 0/3, 2/3 -> mean 6/12.
    assert neighbor_purity(x, labels, k=3) == pytest.approx(0.5)
    # Scaling a row changes no cosine.
    assert neighbor_purity(x * torch.tensor([[1.0], [5.0], [0.2], [3.0]]), labels, k=1) == 0.5


def test_purity_rejects_bad_input() -> None:
    x, labels = blobs(5, 2, dim=4, noise=0.05, seed=0)
    with pytest.raises(ValueError, match="k=10 with N=10"):
        neighbor_purity(x, labels, k=10)
    with pytest.raises(ValueError, match="k=12 with N=10"):
        neighbor_purity(x, labels, k=12)
    with pytest.raises(ValueError, match="k must be at least 1, got k=0"):
        neighbor_purity(x, labels, k=0)
    with pytest.raises(ValueError, match="k must be an integer"):
        neighbor_purity(x, labels, k=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"2-D.*\(10, 4, 1\)"):
        neighbor_purity(x[:, :, None], labels, k=2)
    with pytest.raises(ValueError, match="9 entries.*10 rows"):
        neighbor_purity(x, labels[:-1], k=2)
    with pytest.raises(ValueError, match="labels must hold integers"):
        neighbor_purity(x, labels.float(), k=2)


def test_the_evaluator_scores_one_kmeans_with_every_clustering_metric() -> None:
    from lightly_grpo.evaluation import RetrievalEvaluator, kmeans_clustering_scores
    from lightly_grpo.evaluation.metrics import metric_spec

    torch.manual_seed(0)
    centers = torch.randn(4, 16) * 3
    labels = torch.arange(400) % 4
    x = centers[labels] + torch.randn(400, 16)
    names = ("nmi", "ami", "cluster_acc", "ari")
    evaluator = RetrievalEvaluator(knn_protocols=(), retrieval=False, cluster_metrics=names)
    assert evaluator.metric_names() == list(names)
    metrics = evaluator.evaluate(x, labels).metrics
    # The same k-means (same seed, k = classes) scored by the standalone function: one k-means.
    alone = kmeans_clustering_scores(x, labels, seed=0)
    for name in ("nmi", "cluster_acc", "ari"):
        assert metrics[name] == pytest.approx(alone[name], abs=1e-12), name
    assert 0.5 < metrics["cluster_acc"] <= 1.0
    with pytest.raises(ValueError, match="registered clustering metrics, got 'precision_at_1'"):
        RetrievalEvaluator(cluster_metrics=("precision_at_1",))
    # The metrics a run adds beside the evaluator are registered, with their direction.
    for name in ("classifier_accuracy", "ncm_accuracy", "neighbor_purity", "policy_nmi"):
        spec = metric_spec(name)
        assert spec is not None and spec.needs == "run" and spec.higher_is_better, name
