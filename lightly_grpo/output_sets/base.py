"""The output-set interface: what a group of candidate outputs is for a batch of queries.

GRPO-RM turns a deterministic embedding into a policy by scoring it against a *predefined output
set* (``docs/method.md``). An output set decides, for every query of a batch, which candidates form
its group, which of them are correct, and what else a reward may look at. Implementations:

- :class:`~lightly_grpo.output_sets.ClassPrototypes` (labeled; one learnable key per class).
- k-means prototypes and kNN neighbours (unlabeled / retrieval) build on the same interface:
  ``group`` for a batch with or without labels, ``refresh`` from a bank of embeddings of the
  training set (called by a refresh callback between epochs), and their state in ``state_dict``
  (Lightning checkpoints save it with the model).

A new output set subclasses :class:`OutputSet` (or :class:`KeyedOutputSet` when it is a fixed set of
keys), implements ``group`` and, if it is rebuilt from the data, ``refresh``, and registers itself
with :func:`register_output_set` so configs and checkpoints can name it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightly_grpo.registry import Registry
from lightly_grpo.validation import check_embedding_shape, check_finite


def unit_rows(x: Tensor) -> Tensor:
    """Rows of ``x`` L2-normalised in at least float32 (float64 stays float64).

    A float64 row beyond float32's range (1e39) would overflow to inf if cast first; a float16
    row's norm overflows float16 from |values| of about 256 on. Rows whose squared norm could
    overflow even so (|values| above ~1e18 in float32) are divided by a constant first, which
    leaves the direction and the gradient unchanged (normalisation is scale-invariant); every
    other row is divided by exactly 1. The casts are differentiable, so the gradient reaches
    ``x`` in its own dtype.

    Examples:
        >>> unit_rows(torch.tensor([[3e300, 4e300]], dtype=torch.float64))
        tensor([[0.6000, 0.8000]], dtype=torch.float64)
    """
    wide = x.to(torch.promote_types(x.dtype, torch.float32))
    if wide.numel() == 0:
        return wide
    # sum(x_i^2) <= dim * max|x|^2 stays finite for max|x| <= limit.
    limit = math.sqrt(torch.finfo(wide.dtype).max / max(wide.shape[1], 1)) / 2
    largest = wide.detach().abs().amax(dim=1, keepdim=True)
    return F.normalize(wide / (largest / limit).clamp_min(1.0), dim=1)


def check_similarities(similarities: Tensor, named: dict[str, Tensor | None]) -> None:
    """ValueError naming the NaN/inf input when ``similarities`` hold NaN/inf, on the CPU only.

    On a GPU the check would cost a host synchronisation per batch; there the losses check their
    inputs once per batch (their ``validate`` flag) and this function does nothing.
    """
    if similarities.device.type != "cpu" or similarities.numel() == 0:
        return
    if bool(torch.isfinite(similarities.detach().sum())):
        return
    check_finite(named)
    check_finite({"similarities": similarities})


@dataclass
class OutputGroup:
    """A group of G candidate outputs for each of B queries.

    Attributes:
        similarities: Cosine similarities <z_b, k_{b,i}>, shape (B, G), with gradient.
        correct: Boolean mask of the correct outputs, shape (B, G).
        indices: Which output of the full set each column is, shape (B, G) (int64).
        extras: Further per-output tensors (B, G) that rewards may read through
            :meth:`~lightly_grpo.rewards.RewardInputs.extra` (e.g. a neighbour mask).
        positive: Boolean mask (B, G) of outputs that are not correct but may still be
            rewarded above the group mean (e.g. neighbours of the query): they are exempt from
            the uniformity penalty and from the cap on wrong outputs' advantages. None: none.
    """

    similarities: Tensor
    correct: Tensor
    indices: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)
    positive: Tensor | None = None

    def rewarded(self) -> Tensor:
        """Outputs that may get a positive advantage: the correct ones and the positives."""
        return self.correct if self.positive is None else self.correct | self.positive

    def select(self, index: Tensor) -> OutputGroup:
        """The sub-group given by ``index`` (B, G') into the columns of this group."""
        return OutputGroup(
            similarities=self.similarities.gather(1, index),
            correct=self.correct.gather(1, index),
            indices=self.indices.gather(1, index),
            extras={name: t.gather(1, index) for name, t in self.extras.items()},
            positive=None if self.positive is None else self.positive.gather(1, index),
        )


def sample_group(
    old_logits: Tensor, correct: Tensor, group_size: int, generator: torch.Generator | None = None
) -> Tensor:
    """Samples ``group_size`` outputs per row without replacement from softmax(old_logits).

    Gumbel top-k gives a sample without replacement in one ``topk``; the correct outputs are always
    kept (their keys get +inf) so the accuracy reward never vanishes from a group. The policy, the
    ratio, pi_old inside the rewards and the KL are then all renormalised over the sampled group.

    Args:
        old_logits: Old-policy logits over the whole output set, shape (B, N), no gradient.
        correct: Boolean mask (B, N) of correct outputs.
        group_size: G, at most N.
        generator: Optional random generator.

    Returns:
        Indices of shape (B, G) into the output set.

    Examples:
        >>> logits = torch.tensor([[0.0, 5.0, -5.0, 0.0]])
        >>> correct = torch.tensor([[False, False, False, True]])
        >>> index = sample_group(logits, correct, 2, torch.Generator().manual_seed(0))
        >>> 3 in index.tolist()[0]
        True
    """
    num_outputs = old_logits.shape[1]
    if not 1 <= group_size <= num_outputs:
        raise ValueError(f"group_size must be in [1, {num_outputs}], got {group_size}")
    uniform = torch.rand(
        old_logits.shape, generator=generator, device=old_logits.device, dtype=old_logits.dtype
    )
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))
    keys = (old_logits + gumbel).masked_fill(correct, float("inf"))
    return keys.topk(group_size, dim=1).indices


class OutputSet(nn.Module, ABC):
    """Base class of the predefined output sets.

    Attributes:
        requires_labels: Whether :meth:`group` needs class labels (labeled modes).
        requires_items: Whether :meth:`group` needs the dataset index of every row (sets that
            look items up in a table built from the training set, such as neighbours).
        refreshable: Whether :meth:`refresh` rebuilds the set from a bank of embeddings.
    """

    requires_labels: ClassVar[bool] = False
    requires_items: ClassVar[bool] = False
    refreshable: ClassVar[bool] = False
    type_name: ClassVar[str] = ""

    @property
    @abstractmethod
    def num_outputs(self) -> int:
        """Size of the whole output set (the largest possible group)."""

    @abstractmethod
    def group(
        self, embeddings: Tensor, labels: Tensor | None = None, items: Tensor | None = None
    ) -> OutputGroup:
        """The group of candidate outputs of every query.

        Args:
            embeddings: Query embeddings (B, D), with gradient (normalised inside).
            labels: Class labels (B,) when the output set uses them, else None.
            items: Dataset index (B,) of every row when the output set needs it, else None.
        """

    def reference_similarities(self, embeddings: Tensor, group: OutputGroup) -> Tensor:
        """Similarities (B, G) of reference-model embeddings to the same candidates as ``group``.

        Used for the KL to the frozen pretrained policy; sets whose reference keys differ from the
        current keys (learned prototypes) override it.
        """
        name = type(self).__name__
        raise NotImplementedError(f"{name} does not support a reference KL (beta > 0)")

    def snapshot_reference(self) -> None:
        """Records the current keys as the reference policy's keys (once, before training)."""

    def refresh(self, bank: Tensor, labels: Tensor | None = None) -> None:
        """Rebuilds the output set from embeddings of the training set (between epochs).

        Args:
            bank: L2-normalised embeddings (N, D) of the training items, in dataset order.
            labels: Their labels (N,) when known.
        """
        if self.refreshable:
            raise NotImplementedError(f"{type(self).__name__} must implement refresh")

    def initialize(self, embeddings: Tensor, labels: Tensor | None = None) -> None:
        """Sets the output set up from embeddings of the pretrained model (default: refresh)."""
        self.refresh(embeddings, labels)

    @torch.no_grad()
    def predict(self, embeddings: Tensor) -> Tensor:
        """The index of each query's most probable output over the whole set, shape (B,)."""
        raise NotImplementedError(f"{type(self).__name__} has no fixed outputs to predict")

    def config(self) -> dict[str, Any]:
        """A plain dict that :func:`output_set_from_config` turns into an equal (untrained) set."""
        if not self.type_name:
            raise ValueError(f"{type(self).__name__} is not registered with @register_output_set")
        return {"type": self.type_name, **self.params()}

    def params(self) -> dict[str, Any]:
        """Constructor arguments of this output set."""
        return {}


class KeyedOutputSet(OutputSet):
    """An output set given by N unit keys: the group of a query is (a sample of) every key."""

    @abstractmethod
    def keys(self) -> Tensor:
        """The unit-norm keys, shape (N, D)."""

    @abstractmethod
    def correct_mask(self, labels: Tensor | None, batch_size: int) -> Tensor:
        """Boolean (B, N) mask of each query's correct outputs."""

    def similarities(self, embeddings: Tensor, keys: Tensor | None = None) -> Tensor:
        """Cosine similarity of each (normalised) embedding to every key, shape (B, N)."""
        keys = self.keys() if keys is None else keys
        check_embedding_shape(embeddings, keys.shape[1])
        # Half-precision or float64 embeddings meet float32 keys: score in the keys' dtype (the
        # cast is differentiable, so the gradient reaches the embeddings in their own dtype).
        sims = unit_rows(embeddings).to(keys.dtype) @ keys.t()
        check_similarities(sims, {"embeddings": embeddings, "keys": keys})
        return sims

    def group(
        self, embeddings: Tensor, labels: Tensor | None = None, items: Tensor | None = None
    ) -> OutputGroup:
        sims = self.similarities(embeddings)
        indices = torch.arange(self.num_outputs, device=sims.device).expand_as(sims)
        correct = self.correct_mask(labels, sims.shape[0]).to(sims.device)
        return OutputGroup(similarities=sims, correct=correct, indices=indices)

    @torch.no_grad()
    def predict(self, embeddings: Tensor) -> Tensor:
        return self.similarities(embeddings).argmax(dim=1)


_OUTPUT_SETS: Registry[OutputSet] = Registry("output set")
#: Class decorator: :func:`output_set_from_config` builds the set from ``{"type": name}``.
register_output_set = _OUTPUT_SETS.register


def output_set_from_config(config: dict[str, Any]) -> OutputSet:
    """Builds an (untrained) output set from :meth:`OutputSet.config`."""
    return _OUTPUT_SETS.build(config)
