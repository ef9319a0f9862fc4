"""k-means prototypes: the output set of the unlabeled setting (SwAV-style swapped assignments)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightly.loss.swav_loss import sinkhorn
from torch import Tensor

from lightly_grpo.index.kmeans import spherical_kmeans
from lightly_grpo.index.search import BACKENDS
from lightly_grpo.output_sets.base import (
    KeyedOutputSet,
    OutputGroup,
    register_output_set,
    unit_rows,
)
from lightly_grpo.validation import check_embedding_shape, check_embeddings, check_int

__all__ = ["KMeansPrototypes"]


@register_output_set("kmeans_prototypes")
class KMeansPrototypes(KeyedOutputSet):
    """K spherical k-means centroids of the training embeddings; no labels needed.

    A batch holds two augmented views of B images, concatenated: ``embeddings`` is (2B, D) with
    rows ``[0, B)`` the first view and ``[B, 2B)`` the second view of the same images. The
    correct output of a view is the cluster of the *other* view under a *balanced* assignment:
    Sinkhorn-Knopp (as in SwAV) over each view's similarities to the centroids spreads the B
    images of a view evenly over the clusters, so the policy cannot collapse onto a few of them.
    The targets carry no gradient; the similarities do.

    The centroids are buffers, not parameters: :meth:`refresh` (between epochs) and
    :meth:`initialize` re-run k-means on a bank of training embeddings. Until one of them has run
    the centroids are random unit vectors and :meth:`group` raises.

    Args:
        num_clusters: K, the size of the output set (>= 2).
        embedding_size: Dimension D of the embeddings.
        sinkhorn_iterations: Sinkhorn-Knopp iterations of the balanced assignment (>= 1).
        sinkhorn_epsilon: Sinkhorn temperature (> 0); smaller gives harder assignments.
        kmeans_iterations: Lloyd iterations of each k-means run.
        seed: Seed of the k-means++ initialisation.
        backend: Search backend of k-means (``"auto"``, ``"faiss"``, ``"faiss-gpu"``, ``"tiled"``
            or ``"torch"``).

    Examples:
        >>> prototypes = KMeansPrototypes(num_clusters=4, embedding_size=8)
        >>> prototypes.refresh(torch.nn.functional.normalize(torch.randn(64, 8), dim=1))
        >>> group = prototypes.group(torch.randn(6, 8))  # two views of 3 images
        >>> group.similarities.shape, group.correct.sum(dim=1).tolist()
        (torch.Size([6, 4]), [1, 1, 1, 1, 1, 1])
    """

    requires_labels = False
    refreshable = True

    def __init__(
        self,
        num_clusters: int,
        embedding_size: int,
        sinkhorn_iterations: int = 3,
        sinkhorn_epsilon: float = 0.05,
        kmeans_iterations: int = 20,
        seed: int = 0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        check_int("num_clusters", num_clusters, 2)
        check_int("embedding_size", embedding_size, 1)
        # Zero iterations would leave an unbalanced softmax: the point of Sinkhorn is lost.
        check_int("sinkhorn_iterations", sinkhorn_iterations, 1)
        check_int("kmeans_iterations", kmeans_iterations, 0)
        check_int("seed", seed, 0)
        try:
            if isinstance(sinkhorn_epsilon, (bool, str)):
                raise TypeError
            epsilon = float(sinkhorn_epsilon)
        except (TypeError, ValueError):
            raise ValueError(
                f"sinkhorn_epsilon must be a number > 0, got {sinkhorn_epsilon!r}"
            ) from None
        if not 0.0 < epsilon < float("inf"):
            raise ValueError(f"sinkhorn_epsilon must be finite and > 0, got {sinkhorn_epsilon}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.num_clusters = num_clusters
        self.embedding_size = embedding_size
        self.sinkhorn_iterations = sinkhorn_iterations
        self.sinkhorn_epsilon = epsilon
        self.kmeans_iterations = kmeans_iterations
        self.seed = seed
        self.backend = backend
        self.centroids: Tensor
        self.reference_keys: Tensor
        self.initialized: Tensor
        self.register_buffer(
            "centroids", F.normalize(torch.randn(num_clusters, embedding_size), dim=1)
        )
        self.register_buffer("reference_keys", self.centroids.clone())
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        # Host-side copy of the flag so that every batch does not pay a device synchronisation;
        # kept in step by refresh and by the load hook below.
        self._is_initialized = False
        self.register_load_state_dict_post_hook(KMeansPrototypes._sync_initialized)

    @staticmethod
    def _sync_initialized(module: torch.nn.Module, incompatible_keys: Any) -> None:
        assert isinstance(module, KMeansPrototypes)
        module._is_initialized = bool(module.initialized)

    @property
    def num_outputs(self) -> int:
        return self.num_clusters

    def params(self) -> dict[str, Any]:
        return {
            "num_clusters": self.num_clusters,
            "embedding_size": self.embedding_size,
            "sinkhorn_iterations": self.sinkhorn_iterations,
            "sinkhorn_epsilon": self.sinkhorn_epsilon,
            "kmeans_iterations": self.kmeans_iterations,
            "seed": self.seed,
            "backend": self.backend,
        }

    def keys(self) -> Tensor:
        """The unit-norm centroids, shape (num_clusters, embedding_size)."""
        return self.centroids

    def correct_mask(self, labels: Tensor | None, batch_size: int) -> Tensor:
        raise ValueError(
            "KMeansPrototypes has no label-based correct mask: the correct cluster of a view "
            "comes from the other view's embeddings; call group(embeddings) instead"
        )

    def _check_initialized(self, caller: str) -> None:
        if not self._is_initialized:
            raise ValueError(
                f"KMeansPrototypes.{caller} before the centroids were computed: call "
                "initialize(embeddings) or refresh(bank) with embeddings of the training set first"
            )

    def group(
        self, embeddings: Tensor, labels: Tensor | None = None, items: Tensor | None = None
    ) -> OutputGroup:
        """All K centroids for every view; the correct one is the other view's balanced cluster.

        Args:
            embeddings: (2B, D) embeddings of two views of B images, concatenated (view 0 first).
            labels: Ignored (unlabeled output set).
            items: Ignored (the pairing of the views is given by the row order).

        Returns:
            The group: similarities (2B, K) with gradient, a one-hot ``correct`` mask (2B, K) and
            ``indices`` ``arange(K)`` for every row.
        """
        self._check_initialized("group")
        check_embedding_shape(embeddings, self.embedding_size)
        rows = embeddings.shape[0]
        if rows < 2 or rows % 2 != 0:
            raise ValueError(
                "KMeansPrototypes needs two views concatenated: embeddings of shape (2B, D) with "
                f"rows [0, B) view 0 and [B, 2B) view 1, got shape {tuple(embeddings.shape)}"
            )
        sims = self.similarities(embeddings)
        half = rows // 2
        targets = self._balanced_targets(sims.detach(), half)
        correct = F.one_hot(targets, self.num_clusters).bool()
        indices = torch.arange(self.num_clusters, device=sims.device).expand_as(sims)
        return OutputGroup(similarities=sims, correct=correct, indices=indices)

    @torch.no_grad()
    def _balanced_targets(self, sims: Tensor, half: int) -> Tensor:
        """Swapped targets (2B,): view 0 gets view 1's Sinkhorn cluster and vice versa."""
        # SwAV's sinkhorn takes raw similarity scores and applies exp(score / epsilon) itself.
        # Subtracting the global maximum scales Q by a constant, which its first normalisation
        # removes: the same codes, without overflow for small epsilon.
        scores = sims.float()
        scores = scores - scores.max()
        codes = torch.cat(
            [
                sinkhorn(view, self.sinkhorn_iterations, self.sinkhorn_epsilon)
                for view in (scores[:half], scores[half:])
            ]
        )
        if not bool(torch.isfinite(codes).all()):
            raise ValueError(
                "the Sinkhorn assignment contains NaN or inf values: the embeddings are not "
                f"finite or sinkhorn_epsilon={self.sinkhorn_epsilon} is too small for float32"
            )
        assignment = codes.argmax(dim=1)
        return torch.cat([assignment[half:], assignment[:half]])

    def reference_similarities(self, embeddings: Tensor, group: OutputGroup) -> Tensor:
        sims = self.similarities(embeddings, keys=self.reference_keys)
        return sims.gather(1, group.indices)

    @torch.no_grad()
    def snapshot_reference(self) -> None:
        self.reference_keys.copy_(self.centroids)

    @torch.no_grad()
    def refresh(self, bank: Tensor, labels: Tensor | None = None) -> None:
        """Re-runs spherical k-means on a bank of training embeddings; the result becomes the keys.

        The reference keys follow the new centroids: cluster indices of two k-means runs do not
        correspond, so a reference policy over the old centroids would score other outputs.

        Args:
            bank: Embeddings (N, D) of the training items, N >= num_clusters.
            labels: Ignored.
        """
        check_embeddings(bank, self.embedding_size)
        if bank.shape[0] < self.num_clusters:
            raise ValueError(
                f"k-means needs at least num_clusters={self.num_clusters} embeddings, got a bank "
                f"of {bank.shape[0]} (shape {tuple(bank.shape)})"
            )
        centroids, _ = spherical_kmeans(
            # Unit rows first: float64 embeddings beyond float32's range keep their directions.
            unit_rows(bank.detach()).float(),
            self.num_clusters,
            iterations=self.kmeans_iterations,
            seed=self.seed,
            backend=self.backend,
        )
        self.centroids.copy_(centroids.to(self.centroids))
        self.reference_keys.copy_(self.centroids)
        self.initialized.fill_(True)
        self._is_initialized = True

    @torch.no_grad()
    def predict(self, embeddings: Tensor) -> Tensor:
        """The nearest centroid of each embedding, shape (B,)."""
        self._check_initialized("predict")
        check_embedding_shape(embeddings, self.embedding_size)
        return self.similarities(embeddings).argmax(dim=1)

    @torch.no_grad()
    def cluster_sizes(self, embeddings: Tensor) -> Tensor:
        """How many embeddings have each centroid as their nearest, shape (K,) (int64).

        A few large counts and many zeros mean the embeddings collapsed onto few clusters.

        Examples:
            >>> prototypes = KMeansPrototypes(num_clusters=3, embedding_size=2)
            >>> prototypes.refresh(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
            >>> prototypes.cluster_sizes(torch.tensor([[2.0, 0.1], [1.0, 0.0]])).sum().item()
            2
        """
        return torch.bincount(self.predict(embeddings), minlength=self.num_clusters)
