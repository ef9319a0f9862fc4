"""Reward objects for GRPO-RM (DESIGN.md section 1.2).

A reward maps a group of candidate outputs per query to one number per output. Rewards are
computed without gradient (they are constants of the policy-gradient objective) and compose by
addition: ``AccuracyReward() + UniformityReward(weight=1.0)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class RewardInputs:
    """What a reward may look at, all of shape (batch_size, group_size) and detached.

    Attributes:
        correct: Boolean mask of the correct outputs of each query.
        old_logits: Logits of the old policy (similarity / temperature).
        similarities: Cosine similarities between query embedding and output keys.
    """

    correct: Tensor
    old_logits: Tensor
    similarities: Tensor

    def old_probs(self) -> Tensor:
        """pi_old(i | x) = softmax over the group of the old logits."""
        return torch.softmax(self.old_logits, dim=-1)


class Reward(ABC):
    """Base class: ``reward(inputs) -> Tensor (batch_size, group_size)``."""

    @abstractmethod
    def compute(self, inputs: RewardInputs) -> Tensor:
        """Returns the rewards for every (query, output) pair."""

    def __call__(self, inputs: RewardInputs) -> Tensor:
        with torch.no_grad():
            return self.compute(inputs)

    def __add__(self, other: Reward) -> SumReward:
        return SumReward([self, other])


class SumReward(Reward):
    """Sum of rewards (each may carry its own weight).

    Examples:
        >>> reward = AccuracyReward() + UniformityReward(weight=1.0)
        >>> len(reward.rewards)
        2
    """

    def __init__(self, rewards: list[Reward]) -> None:
        if not rewards:
            raise ValueError("SumReward needs at least one reward, got an empty list")
        flat: list[Reward] = []
        for reward in rewards:
            flat.extend(reward.rewards if isinstance(reward, SumReward) else [reward])
        self.rewards: list[Reward] = flat

    def compute(self, inputs: RewardInputs) -> Tensor:
        total = self.rewards[0].compute(inputs).clone()
        for reward in self.rewards[1:]:
            total.add_(reward.compute(inputs))
        return total

    def __repr__(self) -> str:
        return " + ".join(repr(r) for r in self.rewards)


class AccuracyReward(Reward):
    """``weight`` for correct outputs, 0 otherwise.

    Args:
        weight: Reward of a correct output.

    Examples:
        >>> reward = AccuracyReward()
        >>> correct = torch.tensor([[True, False]])
        >>> inputs = RewardInputs(correct, torch.zeros(1, 2), torch.zeros(1, 2))
        >>> reward(inputs)
        tensor([[1., 0.]])
    """

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = float(weight)

    def compute(self, inputs: RewardInputs) -> Tensor:
        reward = inputs.correct.to(inputs.old_logits.dtype)
        return reward if self.weight == 1.0 else reward.mul_(self.weight)

    def __repr__(self) -> str:
        return f"AccuracyReward(weight={self.weight})"


class UniformityReward(Reward):
    """Penalises wrong outputs; correct outputs get 0.

    Two forms (DESIGN.md 1.2):

    - ``"policy"``: r = -weight * pi_old(i | x). Confident mistakes are punished harder; with
      weight = 1 and an accuracy reward of 1 every wrong output's advantage stays <= 0.
    - ``"similarity"``: r = -weight * max(<z, k_i>, 0). Pushes away from wrong keys in embedding
      space. The clamp (``clamp=True``) matters: rewards are compared within the group, so an
      unclamped penalty rewards wrong keys with negative cosine above the group mean.

    Args:
        weight: lambda, the strength of the penalty (>= 0).
        form: ``"policy"`` or ``"similarity"``.
        clamp: Clamp negative similarities to 0 in the ``"similarity"`` form.

    Examples:
        >>> reward = UniformityReward(weight=1.0, form="policy")
    """

    FORMS = ("policy", "similarity")

    def __init__(self, weight: float = 1.0, form: str = "policy", clamp: bool = True) -> None:
        if form not in self.FORMS:
            raise ValueError(f"form must be one of {self.FORMS}, got {form!r}")
        if not weight >= 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        self.weight = float(weight)
        self.form = form
        self.clamp = clamp

    def compute(self, inputs: RewardInputs) -> Tensor:
        if self.form == "policy":
            penalty = inputs.old_probs()
        else:
            penalty = inputs.similarities.clamp_min(0.0) if self.clamp else inputs.similarities
        return penalty.masked_fill(inputs.correct, 0.0).mul_(-self.weight)

    def __repr__(self) -> str:
        return f"UniformityReward(weight={self.weight}, form={self.form!r}, clamp={self.clamp})"


def default_reward() -> Reward:
    """Accuracy + uniformity (-pi_old, lambda = 1): the combination the prototype found best."""
    return AccuracyReward(1.0) + UniformityReward(1.0, form="policy")


def build_reward(accuracy: float = 1.0, uniformity: float = 1.0, form: str = "policy") -> Reward:
    """Builds accuracy (+ uniformity when ``uniformity > 0``) from plain numbers (CLI flags)."""
    if uniformity > 0:
        return AccuracyReward(accuracy) + UniformityReward(uniformity, form=form)
    return AccuracyReward(accuracy)
