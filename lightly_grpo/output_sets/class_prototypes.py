"""Learnable class prototypes: the output set of the labeled (paper's) setting."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightly_grpo.output_sets.base import OutputGroup


def check_labels(labels: Tensor, num_classes: int, batch_size: int | None = None) -> None:
    """Raises ValueError when labels are not integers in [0, num_classes) or have the wrong size."""
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    if batch_size is not None and labels.shape[0] != batch_size:
        raise ValueError(f"got {labels.shape[0]} labels for a batch of {batch_size} embeddings")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got {bad[:5].tolist()} "
            f"({bad.numel()} out of range)"
        )


def check_batch(
    embeddings: Tensor, labels: Tensor, num_classes: int, keys: Tensor | None = None
) -> None:
    """Validates a labeled batch with a single host synchronisation (cheap on a GPU).

    Shapes and dtypes are checked on the host; NaN/inf in the embeddings or keys and labels
    outside [0, num_classes) are folded into one flag, and only when it is set are the detailed
    checks run to name the offending values.
    """
    check_embedding_shape(embeddings, None)
    if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
        check_labels(labels, num_classes, embeddings.shape[0])
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    sums = [embeddings.detach().sum().float()]
    if keys is not None:
        sums.append(keys.detach().sum().float())
    flags = torch.stack(
        [
            ~torch.isfinite(torch.stack(sums)).all(),
            (labels.min() < 0) | (labels.max() >= num_classes),
        ]
    )
    if bool(flags.any()):
        check_embeddings(embeddings)
        if keys is not None and not bool(torch.isfinite(keys).all()):
            raise ValueError(
                f"the prototypes contain NaN or inf values (shape {tuple(keys.shape)}): "
                "the previous optimizer step diverged"
            )
        check_labels(labels, num_classes, embeddings.shape[0])


def check_embedding_shape(embeddings: Tensor, embedding_size: int | None = None) -> None:
    """Raises ValueError for a non-2-D, empty or wrongly sized embedding batch (no sync)."""
    if embeddings.dim() != 2:
        raise ValueError(
            f"embeddings must have shape (batch_size, dim), got {tuple(embeddings.shape)}"
        )
    if embeddings.shape[0] == 0:
        raise ValueError(f"empty batch: embeddings have shape {tuple(embeddings.shape)}")
    if embedding_size is not None and embeddings.shape[1] != embedding_size:
        raise ValueError(
            f"embeddings have dimension {embeddings.shape[1]}, expected {embedding_size}"
        )


def check_embeddings(embeddings: Tensor, embedding_size: int | None = None) -> None:
    """Raises ValueError for a non-2-D, empty, wrongly sized or non-finite embedding batch."""
    check_embedding_shape(embeddings, embedding_size)
    if not bool(torch.isfinite(embeddings).all()):
        bad = int((~torch.isfinite(embeddings)).sum())
        raise ValueError(
            f"embeddings contain {bad} NaN or inf value(s) (shape {tuple(embeddings.shape)})"
        )


class ClassPrototypes(nn.Module):
    """One learnable unit vector per class; the correct output of a query is its true class.

    The keys are ``normalize(weight)``, so the policy logits ``<z, k> / tau`` stay within
    ``[-1/tau, 1/tau]``: bounded logits are what keep the accuracy objective from diverging.

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

    def __init__(self, num_classes: int, embedding_size: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if embedding_size < 1:
            raise ValueError(f"embedding_size must be >= 1, got {embedding_size}")
        self.num_classes = num_classes
        self.embedding_size = embedding_size
        self.weight = nn.Parameter(F.normalize(torch.randn(num_classes, embedding_size), dim=1))

    def keys(self) -> Tensor:
        """The unit-norm keys, shape (num_classes, embedding_size)."""
        return F.normalize(self.weight, dim=1)

    def similarities(self, embeddings: Tensor) -> Tensor:
        """Cosine similarity of each (normalised) embedding to every key, shape (B, C)."""
        return F.normalize(embeddings, dim=1) @ self.keys().t()

    def group(self, embeddings: Tensor, labels: Tensor) -> OutputGroup:
        """The whole output set as the group of every query."""
        sims = self.similarities(embeddings)
        correct = torch.zeros_like(sims, dtype=torch.bool).scatter_(1, labels.unsqueeze(1), True)
        indices = torch.arange(self.num_classes, device=sims.device).expand_as(sims)
        return OutputGroup(similarities=sims, correct=correct, indices=indices)

    @torch.no_grad()
    def init_from_embeddings(self, embeddings: Tensor, labels: Tensor) -> None:
        """Sets every key to the normalised mean embedding of its class.

        Classes absent from ``labels`` keep their random key (with a warning).

        Args:
            embeddings: Embeddings of shape (N, embedding_size).
            labels: Integer labels of shape (N,) in [0, num_classes).
        """
        check_embeddings(embeddings, self.embedding_size)
        check_labels(labels, self.num_classes, embeddings.shape[0])
        normed = F.normalize(embeddings.float(), dim=1).to(self.weight.device)
        labels = labels.to(self.weight.device)
        sums = torch.zeros_like(self.weight).index_add_(0, labels, normed.to(self.weight.dtype))
        counts = torch.bincount(labels, minlength=self.num_classes)
        present = counts > 0
        if not bool(present.all()):
            missing = torch.nonzero(~present).flatten().tolist()
            warnings.warn(
                f"classes {missing[:10]} have no embeddings; their prototypes stay random",
                stacklevel=2,
            )
        self.weight[present] = F.normalize(sums[present], dim=1)

    @torch.no_grad()
    def predict(self, embeddings: Tensor) -> Tensor:
        """The policy's argmax class for each embedding, shape (B,)."""
        return self.similarities(embeddings).argmax(dim=1)
