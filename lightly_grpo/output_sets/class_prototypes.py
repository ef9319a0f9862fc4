"""Learnable class prototypes: the output set of the labeled (paper's) setting."""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightly_grpo.embedding import class_means
from lightly_grpo.output_sets.base import (
    KeyedOutputSet,
    OutputGroup,
    register_output_set,
)
from lightly_grpo.validation import (
    as_labels,
    check_embedding_shape,
    check_embeddings,
    check_int,
    check_labeled_batch,
    check_labels,
)

# Old names of the validation helpers, kept importable from here.
check_batch = check_labeled_batch
__all__ = [
    "ClassPrototypes",
    "check_batch",
    "check_embedding_shape",
    "check_embeddings",
    "check_labels",
]


@register_output_set("class_prototypes")
class ClassPrototypes(KeyedOutputSet):
    """One learnable unit vector per class; the correct output of a query is its true class.

    The keys are ``normalize(weight)``, so the policy logits ``<z, k> / tau`` stay within
    ``[-1/tau, 1/tau]``: bounded logits are what keep the accuracy objective from diverging.
    With a reference KL (``beta > 0``) the reference policy scores the reference model's
    embeddings against the keys recorded by :meth:`snapshot_reference` (the initial prototypes).

    Args:
        num_classes: Number of classes (size of the output set).
        embedding_size: Dimension of the embeddings.

    Examples:
        >>> prototypes = ClassPrototypes(num_classes=10, embedding_size=128)
        >>> z = torch.nn.functional.normalize(torch.randn(4, 128), dim=1)
        >>> group = prototypes.group(z, torch.tensor([0, 1, 2, 3]))
        >>> group.similarities.shape
        torch.Size([4, 10])
    """

    requires_labels = True

    def __init__(self, num_classes: int, embedding_size: int) -> None:
        super().__init__()
        self.num_classes = check_int("num_classes", num_classes, 2)
        self.embedding_size = check_int("embedding_size", embedding_size, 1)
        self.weight = nn.Parameter(F.normalize(torch.randn(num_classes, embedding_size), dim=1))
        self.reference_keys: Tensor
        self.register_buffer("reference_keys", self.weight.detach().clone())

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    def params(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "embedding_size": self.embedding_size}

    def keys(self) -> Tensor:
        """The unit-norm keys, shape (num_classes, embedding_size)."""
        return F.normalize(self.weight, dim=1)

    def correct_mask(self, labels: Tensor | None, batch_size: int) -> Tensor:
        if labels is None:
            raise ValueError(
                "ClassPrototypes needs class labels: batches must be (images, labels, ...); "
                "for unlabeled data use an unlabeled output set"
            )
        labels = as_labels(labels)
        if labels.shape != (batch_size,):
            raise ValueError(
                f"labels must have shape ({batch_size},) (one per embedding), "
                f"got {tuple(labels.shape)}"
            )
        if labels.device.type == "cpu":
            # The range check costs a host synchronisation on a GPU, where the loss's validate
            # flag decides; a comparison (not a scatter) cannot crash on a label out of range.
            check_labels(labels, self.num_classes, batch_size)
        classes = torch.arange(self.num_classes, device=labels.device)
        return labels.unsqueeze(1) == classes

    def reference_similarities(self, embeddings: Tensor, group: OutputGroup) -> Tensor:
        sims = self.similarities(embeddings, keys=self.reference_keys)
        return sims.gather(1, group.indices)

    @torch.no_grad()
    def snapshot_reference(self) -> None:
        self.reference_keys.copy_(self.keys())

    def initialize(self, embeddings: Tensor, labels: Tensor | None = None) -> None:
        if labels is None:
            raise ValueError("ClassPrototypes.initialize needs the labels of the embeddings")
        self.init_from_embeddings(embeddings, labels)

    @torch.no_grad()
    def init_from_embeddings(self, embeddings: Tensor, labels: Tensor) -> None:
        """Sets every key to the normalised mean of its class's L2-normalised embeddings.

        Classes absent from ``labels`` keep their random key (with a warning).

        Args:
            embeddings: Embeddings of shape (N, embedding_size).
            labels: Integer labels of shape (N,) in [0, num_classes).
        """
        check_embeddings(embeddings, self.embedding_size)
        check_labels(labels, self.num_classes, embeddings.shape[0])
        keys, present = class_means(embeddings, labels, self.num_classes)
        if not bool(present.all()):
            missing = torch.nonzero(~present).flatten().tolist()
            warnings.warn(
                f"classes {missing[:10]} have no embeddings; their prototypes stay random",
                stacklevel=2,
            )
        present = present.to(self.weight.device)
        self.weight[present] = keys.to(self.weight)[present]
