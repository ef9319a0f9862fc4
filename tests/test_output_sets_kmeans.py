"""KMeansPrototypes: the unlabeled k-means output set with swapped, balanced targets."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from lightly_grpo.losses.policy import GRPORMPolicyLoss
from lightly_grpo.output_sets.base import OutputSet, output_set_from_config
from lightly_grpo.output_sets.kmeans_prototypes import KMeansPrototypes

DIM = 8


def _blob_means(num_blobs: int, dim: int = DIM) -> torch.Tensor:
    # Orthonormal directions: blobs far apart on the sphere (cosine 0 between their means).
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(1)))
    return q[:num_blobs]


def _blob_points(means: torch.Tensor, blob: torch.Tensor, noise: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    points = means[blob] + noise * torch.randn(len(blob), means.shape[1], generator=gen)
    return F.normalize(points, dim=1)


def _fitted(num_clusters: int = 3, **kwargs: Any) -> tuple[KMeansPrototypes, torch.Tensor]:
    means = _blob_means(num_clusters)
    blob = torch.arange(num_clusters).repeat_interleave(100)
    km = KMeansPrototypes(num_clusters=num_clusters, embedding_size=DIM, **kwargs)
    km.refresh(_blob_points(means, blob, noise=0.1, seed=0))
    return km, means


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_refresh_finds_the_blob_means(backend: str) -> None:
    km, means = _fitted(backend=backend)
    cosines = means @ km.keys().T  # (blob, centroid)
    best = cosines.argmax(dim=1)
    assert sorted(best.tolist()) == [0, 1, 2]  # one centroid per blob
    assert (cosines.max(dim=1).values > 0.98).all()
    assert torch.allclose(km.keys().norm(dim=1), torch.ones(3), atol=1e-5)
    # The reference keys follow the refresh (old cluster indices would not correspond).
    assert torch.equal(km.reference_keys, km.centroids)


def test_group_marks_the_other_views_cluster_as_correct() -> None:
    km, means = _fitted()
    cluster_of_blob = (means @ km.keys().T).argmax(dim=1)
    # Same images in both views: each view's target is its own blob's cluster.
    blob = torch.tensor([0, 1, 2, 0, 1, 2])
    view0 = _blob_points(means, blob, noise=0.05, seed=1)
    view1 = _blob_points(means, blob, noise=0.05, seed=2)
    embeddings = torch.cat([view0, view1]).requires_grad_()
    group = km.group(embeddings)
    expected = cluster_of_blob[blob.repeat(2)]
    assert group.correct.shape == (12, 3) and group.correct.dtype == torch.bool
    assert (group.correct.sum(dim=1) == 1).all()
    assert torch.equal(group.correct.float().argmax(dim=1), expected)
    assert torch.equal(group.indices, torch.arange(3).expand(12, 3))
    assert group.similarities.requires_grad and not group.correct.requires_grad

    # Views that disagree: the target of a view is the *other* view's cluster, not its own.
    other = (blob + 1) % 3
    embeddings = torch.cat([view0, _blob_points(means, other, noise=0.05, seed=3)])
    targets = km.group(embeddings).correct.float().argmax(dim=1)
    assert torch.equal(targets[:6], cluster_of_blob[other])
    assert torch.equal(targets[6:], cluster_of_blob[blob])
    own = km.predict(embeddings)
    assert not torch.equal(targets, own)


def test_targets_are_balanced_when_every_raw_argmax_is_one_cluster() -> None:
    km = KMeansPrototypes(num_clusters=4, embedding_size=4)
    km.refresh(torch.eye(4).repeat_interleave(10, dim=0))
    assert torch.allclose(km.keys().abs().max(dim=1).values, torch.ones(4))
    first = int(km.predict(torch.eye(4)[:1]))
    # Every embedding is nearest to cluster `first`; each leans a little towards one other axis.
    lean = torch.tensor([1, 2, 3, 1, 2, 3, 1, 2, 3, 1])
    lean = torch.where(lean <= first, lean - 1, lean)  # the three axes other than `first`
    view = 3.0 * torch.eye(4)[first] + torch.eye(4)[lean]
    view = view + 0.01 * torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    embeddings = torch.cat([view, view.flip(0)])
    assert (km.predict(embeddings) == first).all()
    assert torch.equal(km.cluster_sizes(embeddings), F.one_hot(torch.tensor(first), 4) * 20)
    targets = km.group(embeddings).correct.float().argmax(dim=1)
    counts = torch.bincount(targets, minlength=4)
    assert int((counts > 0).sum()) >= 3  # spread over several clusters, not collapsed
    assert int(counts.max()) <= 10  # no cluster takes more than half of the rows


def test_state_dict_round_trip_gives_identical_predictions() -> None:
    km, means = _fitted()
    embeddings = _blob_points(means, torch.arange(3).repeat(4), noise=0.3, seed=5)
    rebuilt = KMeansPrototypes(**km.params())
    with pytest.raises(ValueError, match="before the centroids were computed"):
        rebuilt.predict(embeddings)
    rebuilt.load_state_dict(km.state_dict())
    assert torch.equal(rebuilt.predict(embeddings), km.predict(embeddings))
    assert torch.equal(rebuilt.group(embeddings).correct, km.group(embeddings).correct)
    assert torch.equal(rebuilt.reference_keys, km.reference_keys)


def test_config_rebuilds_an_equal_untrained_set() -> None:
    km = KMeansPrototypes(
        num_clusters=5,
        embedding_size=DIM,
        sinkhorn_iterations=4,
        sinkhorn_epsilon=0.1,
        kmeans_iterations=7,
        seed=3,
        backend="torch",
    )
    assert isinstance(km, OutputSet)
    assert not km.requires_labels and km.refreshable
    config = km.config()
    assert config["type"] == "kmeans_prototypes"
    rebuilt = output_set_from_config(config)
    assert isinstance(rebuilt, KMeansPrototypes)
    assert rebuilt.params() == km.params() and rebuilt.num_outputs == 5
    with pytest.raises(ValueError, match="before the centroids were computed"):
        rebuilt.group(torch.randn(4, DIM))


def test_policy_loss_forward_backward_without_labels() -> None:
    km, means = _fitted()
    criterion = GRPORMPolicyLoss(km, temperature=0.1)
    blob = torch.arange(3).repeat(4)
    embeddings = torch.cat(
        [_blob_points(means, blob, 0.2, seed=6), _blob_points(means, blob, 0.2, seed=7)]
    ).requires_grad_()
    loss, stats = criterion.forward_with_stats(embeddings)
    loss.backward()
    assert embeddings.grad is not None
    assert torch.isfinite(loss) and torch.isfinite(embeddings.grad).all()
    assert embeddings.grad.abs().sum() > 0
    assert torch.isfinite(stats["accuracy"])

    # With a reference KL (beta > 0) over the reference keys, and a sampled group.
    criterion = GRPORMPolicyLoss(km, temperature=0.1, beta=0.1, group_size=2)
    km.snapshot_reference()
    reference = embeddings.detach() + 0.01
    group = criterion.old_policy(reference)
    ref_logits = criterion.reference_logits(reference, group)
    loss = criterion(embeddings, ref_logits=ref_logits)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(embeddings.grad).all()


def test_bad_input_raises() -> None:
    km, _ = _fitted()
    with pytest.raises(ValueError, match=r"two views concatenated.*\(5, 8\)"):
        km.group(torch.randn(5, DIM))
    with pytest.raises(ValueError, match=r"two views concatenated.*\(1, 8\)"):
        km.group(torch.randn(1, DIM))
    with pytest.raises(ValueError, match="dimension 4, expected 8"):
        km.group(torch.randn(4, 4))
    with pytest.raises(ValueError, match="NaN or inf"):
        km.group(torch.full((4, DIM), float("nan")))
    with pytest.raises(ValueError, match="no label-based correct mask"):
        km.correct_mask(None, 4)
    fresh = KMeansPrototypes(num_clusters=10, embedding_size=DIM)
    with pytest.raises(ValueError, match=r"num_clusters=10.*bank of 4"):
        fresh.refresh(torch.randn(4, DIM))
    with pytest.raises(ValueError, match="dimension 3, expected 8"):
        fresh.refresh(torch.randn(20, 3))
    bank = torch.randn(20, DIM)
    bank[3, 1] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        fresh.refresh(bank)
    with pytest.raises(ValueError, match="before the centroids were computed"):
        fresh.group(torch.randn(4, DIM))
    cases: list[tuple[dict[str, Any], str]] = [
        ({"num_clusters": 1}, "num_clusters must be >= 2"),
        ({"num_clusters": 2.5}, "num_clusters must be an integer"),
        ({"embedding_size": 0}, "embedding_size must be >= 1"),
        ({"sinkhorn_iterations": 0}, "sinkhorn_iterations must be >= 1"),
        ({"sinkhorn_epsilon": 0.0}, "sinkhorn_epsilon must be finite and > 0"),
        ({"kmeans_iterations": -1}, "kmeans_iterations must be >= 0"),
        ({"backend": "nope"}, "backend must be one of"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            KMeansPrototypes(**{"num_clusters": 3, "embedding_size": DIM, **kwargs})


def test_refresh_stores_centroids_in_the_buffers_dtype() -> None:
    km = KMeansPrototypes(num_clusters=3, embedding_size=DIM).double()
    km.refresh(torch.randn(30, DIM))
    assert km.centroids.dtype == torch.float64 and km.reference_keys.dtype == torch.float64
    assert km.group(torch.randn(4, DIM, dtype=torch.float64)).similarities.dtype == torch.float64
