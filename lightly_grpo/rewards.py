"""Reward objects for GRPO-RM (``docs/method.md``, "Rewards").

A reward maps a group of candidate outputs per query to one number per output. Rewards are
computed without gradient (they are constants of the policy-gradient objective) and compose by
addition: ``AccuracyReward() + UniformityReward(weight=1.0)``. Every reward can be written to and
rebuilt from a plain dict (:meth:`Reward.config`, :func:`reward_from_config`), so a Lightning
checkpoint remembers which reward trained it.

A new reward subclasses :class:`Reward`, reads what it needs from :class:`RewardInputs` (output
sets may add their own per-output tensors under ``extras``, e.g. a neighbour mask) and registers
itself with :func:`register_reward` so that configs can name it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

import torch
from torch import Tensor

from lightly_grpo.registry import Registry
from lightly_grpo.validation import check_finite

#: Lambda of the uniformity penalty -lambda * pi_old on wrong outputs (at most the accuracy weight
#: keeps every wrong output's advantage <= 0 without the cap; the loss caps it anyway).
DEFAULT_UNIFORMITY_WEIGHT = 1.0
#: Reward of a reference-space neighbour (the query's own other view gets 1).
DEFAULT_NEIGHBOR_WEIGHT = 0.5

#: Largest reward weight. Rewards are scored in float32 and the loss squares their differences
#: over a group (the standard deviation of the advantages): with three rewards of weight
#: <= 1e12 a squared difference is <= 1e25, so even groups of 10^13 outputs stay finite.
MAX_REWARD_WEIGHT = 1e12


def check_weight(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """``value`` as a float, or ValueError naming ``name`` when it is not a usable reward weight.

    A weight must be a real number (not a bool), finite, ``> 0`` (``>= 0`` with
    ``allow_zero``) and at most :data:`MAX_REWARD_WEIGHT`.

    Examples:
        >>> check_weight("weight", 2)
        2.0
        >>> check_weight("weight", float("nan"))
        Traceback (most recent call last):
        ...
        ValueError: weight must be a finite number > 0, got nan
    """
    bound = ">= 0" if allow_zero else "> 0"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a number {bound}, got {type(value).__name__} {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number {bound}, got {value}")
    if number < 0 or (number == 0 and not allow_zero):
        raise ValueError(f"{name} must be {bound}, got {value}")
    if number > MAX_REWARD_WEIGHT:
        raise ValueError(
            f"{name} must be at most {MAX_REWARD_WEIGHT:g} (rewards are scored in float32 and "
            f"their differences squared), got {value}; rewards are compared within a group, "
            "so scale all weights down together"
        )
    return number


def _check_mask(name: str, mask: Tensor | None, shape: torch.Size) -> None:
    """ValueError unless ``mask`` is None or a bool tensor of ``shape`` (no synchronisation)."""
    if mask is None:
        return
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        kind = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"{name} must be a bool tensor, got {kind}")
    if mask.shape != shape:
        raise ValueError(
            f"{name} must have the shape of correct {tuple(shape)}, got {tuple(mask.shape)}"
        )


@dataclass
class RewardInputs:
    """What a reward may look at, all of shape (batch_size, group_size) and detached.

    Attributes:
        correct: Boolean mask of the correct outputs of each query.
        old_logits: Logits of the old policy (similarity / temperature).
        similarities: Cosine similarities between query embedding and output keys.
        extras: Output-set-specific inputs (:meth:`extra`).
        positive: Outputs that are not correct but not wrong either (e.g. neighbours of the
            query); the uniformity penalty spares them. None: every non-correct output is wrong.
    """

    correct: Tensor
    old_logits: Tensor
    similarities: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)
    positive: Tensor | None = None

    def __post_init__(self) -> None:
        # Shapes and dtypes only (no host synchronisation): values are checked on the rewards.
        if not isinstance(self.correct, Tensor) or self.correct.dtype != torch.bool:
            kind = self.correct.dtype if isinstance(self.correct, Tensor) else type(self.correct)
            raise ValueError(f"correct must be a bool tensor (batch_size, group_size), got {kind}")
        shape = self.correct.shape
        if len(shape) != 2:
            raise ValueError(
                f"correct must have shape (batch_size, group_size), got {tuple(shape)}"
            )
        for name in ("old_logits", "similarities"):
            value = getattr(self, name)
            if not isinstance(value, Tensor) or not value.is_floating_point():
                got = value.dtype if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"{name} must be a floating-point tensor, got {got}")
            if value.shape != shape:
                raise ValueError(
                    f"{name} must have the shape of correct {tuple(shape)}, "
                    f"got {tuple(value.shape)}"
                )
        _check_mask("positive", self.positive, shape)
        for name, extra in self.extras.items():
            if not isinstance(extra, Tensor) or extra.shape != shape:
                found = tuple(extra.shape) if isinstance(extra, Tensor) else type(extra).__name__
                raise ValueError(
                    f"extras[{name!r}] must be a tensor of the shape of correct {tuple(shape)}, "
                    f"got {found}"
                )

    def reward_dtype(self) -> torch.dtype:
        """Rewards are scored in at least float32: a weighted reward overflows float16."""
        return torch.promote_types(self.old_logits.dtype, torch.float32)

    def wrong(self) -> Tensor:
        """Boolean mask of the outputs a penalty applies to: neither correct nor positive."""
        spared = self.correct if self.positive is None else self.correct | self.positive
        return ~spared

    def old_probs(self) -> Tensor:
        """pi_old(i | x) = softmax over the group of the old logits."""
        return torch.softmax(self.old_logits, dim=-1)

    def extra(self, name: str) -> Tensor:
        """An output-set-specific input (B, G), e.g. ``"neighbor"``; ValueError when absent."""
        if name not in self.extras:
            raise ValueError(
                f"this reward needs the input {name!r}, which the output set does not provide "
                f"(it provides {sorted(self.extras) or 'no extras'})"
            )
        return self.extras[name]


_REWARDS: Registry[Reward] = Registry("reward")
#: Class decorator: :func:`reward_from_config` rebuilds the reward from ``{"type": name}``.
register_reward = _REWARDS.register


class Reward(ABC):
    """Base class: ``reward(inputs) -> Tensor (batch_size, group_size)``."""

    type_name: str = ""

    @abstractmethod
    def compute(self, inputs: RewardInputs) -> Tensor:
        """Returns the rewards for every (query, output) pair."""

    def params(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this reward (override when there are any)."""
        return {}

    def config(self) -> dict[str, Any]:
        """A plain dict that :func:`reward_from_config` turns back into an equal reward."""
        if not self.type_name:
            raise ValueError(
                f"{type(self).__name__} is not registered: decorate it with @register_reward(name) "
                "so that checkpoints can record it"
            )
        return {"type": self.type_name, **self.params()}

    def __call__(self, inputs: RewardInputs) -> Tensor:
        """The rewards (B, G), at least float32; ValueError instead of NaN/inf rewards.

        The finiteness check is one host synchronisation; on failure it names the input that
        holds NaN/inf, or says that finite inputs overflowed.
        """
        with torch.no_grad():
            rewards = self.compute(inputs)
            if rewards.numel() and not bool(torch.isfinite(rewards.sum())):
                check_finite(
                    {
                        "old_logits": inputs.old_logits,
                        "similarities": inputs.similarities,
                        **{f"extras[{name!r}]": t.float() for name, t in inputs.extras.items()},
                    },
                    hint=f"the reward {self!r} cannot score them",
                )
                if not bool(torch.isfinite(rewards).all()):
                    raise ValueError(
                        f"the reward {self!r} overflowed float32 on finite inputs (largest "
                        f"|similarity| {float(inputs.similarities.abs().max()):.3g}); "
                        "similarities are cosines in [-1, 1]"
                    )
            return rewards

    def __add__(self, other: Reward) -> SumReward:
        return SumReward([self, other])

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.params() == other.params()

    def __hash__(self) -> int:
        return hash((type(self).__name__, repr(self)))


def reward_from_config(config: dict[str, Any] | Reward) -> Reward:
    """Rebuilds a reward from :meth:`Reward.config` (a reward passes through unchanged).

    Examples:
        >>> reward = AccuracyReward() + UniformityReward(0.5, form="similarity")
        >>> reward_from_config(reward.config()) == reward
        True
    """
    if isinstance(config, Reward):
        return config
    return _REWARDS.build(config)


@register_reward("sum")
class SumReward(Reward):
    """Sum of rewards (each may carry its own weight).

    Examples:
        >>> reward = AccuracyReward() + UniformityReward(weight=1.0)
        >>> len(reward.rewards)
        2
    """

    def __init__(self, rewards: list[Reward | dict[str, Any]]) -> None:
        if not rewards:
            raise ValueError("SumReward needs at least one reward, got an empty list")
        flat: list[Reward] = []
        for item in rewards:
            reward = reward_from_config(item)
            flat.extend(reward.rewards if isinstance(reward, SumReward) else [reward])
        self.rewards: list[Reward] = flat

    def params(self) -> dict[str, Any]:
        return {"rewards": [r.config() for r in self.rewards]}

    def compute(self, inputs: RewardInputs) -> Tensor:
        total = self.rewards[0].compute(inputs).clone()
        for reward in self.rewards[1:]:
            total.add_(reward.compute(inputs))
        return total

    def __repr__(self) -> str:
        return " + ".join(repr(r) for r in self.rewards)


@register_reward("accuracy")
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
        self.weight = check_weight("weight", weight)

    def params(self) -> dict[str, Any]:
        return {"weight": self.weight}

    def compute(self, inputs: RewardInputs) -> Tensor:
        reward = inputs.correct.to(inputs.reward_dtype())
        return reward if self.weight == 1.0 else reward.mul_(self.weight)

    def __repr__(self) -> str:
        return f"AccuracyReward(weight={self.weight})"


@register_reward("uniformity")
class UniformityReward(Reward):
    """Penalises wrong outputs; correct outputs get 0.

    Two forms (``docs/method.md``, "Rewards"):

    - ``"policy"``: r = -weight * pi_old(i | x). Confident mistakes are punished harder.
    - ``"similarity"``: r = -weight * max(<z, k_i>, 0). Pushes away from wrong keys in embedding
      space (``clamp=False`` drops the clamp).

    Rewards are compared within the group, so on their own either form can rank a wrong output
    above the group mean (the similarity form for keys with negative cosine, the policy form when
    ``weight`` exceeds the accuracy weight). The loss therefore caps every wrong output's
    advantage at 0 (``docs/method.md``, "Advantages"): no setting gives a wrong output a push up.

    Args:
        weight: lambda, the strength of the penalty (>= 0).
        form: ``"policy"`` or ``"similarity"``.
        clamp: Clamp negative similarities to 0 in the ``"similarity"`` form.

    Examples:
        >>> reward = UniformityReward(weight=1.0, form="policy")
    """

    FORMS = ("policy", "similarity")

    def __init__(
        self, weight: float = DEFAULT_UNIFORMITY_WEIGHT, form: str = "policy", clamp: bool = True
    ) -> None:
        if form not in self.FORMS:
            raise ValueError(f"form must be one of {self.FORMS}, got {form!r}")
        self.weight = check_weight("weight", weight, allow_zero=True)
        self.form = form
        self.clamp = bool(clamp)

    def params(self) -> dict[str, Any]:
        return {"weight": self.weight, "form": self.form, "clamp": self.clamp}

    def compute(self, inputs: RewardInputs) -> Tensor:
        dtype = inputs.reward_dtype()
        if self.form == "policy":
            penalty = torch.softmax(inputs.old_logits.to(dtype), dim=-1)
        else:
            similarities = inputs.similarities.to(dtype)
            penalty = similarities.clamp_min(0.0) if self.clamp else similarities
        return penalty.masked_fill(~inputs.wrong(), 0.0).mul_(-self.weight)

    def __repr__(self) -> str:
        return f"UniformityReward(weight={self.weight}, form={self.form!r}, clamp={self.clamp})"


@register_reward("mask")
class MaskReward(Reward):
    """``weight`` for the outputs an output-set mask marks (``RewardInputs.extra(name)``).

    The unlabeled output sets mark, for instance, the query's nearest neighbours in the frozen
    pretrained space (``"neighbor"``): rewarding them less than the instance itself tells the
    policy that they are close, without calling them the answer.

    Args:
        name: The extra input holding the boolean mask (B, G).
        weight: Reward of a marked output (> 0).

    Examples:
        >>> reward = MaskReward("neighbor", 0.5)
        >>> inputs = RewardInputs(
        ...     torch.tensor([[True, False, False]]), torch.zeros(1, 3), torch.zeros(1, 3),
        ...     extras={"neighbor": torch.tensor([[False, True, False]])},
        ... )
        >>> reward(inputs)
        tensor([[0.0000, 0.5000, 0.0000]])
    """

    def __init__(self, name: str = "neighbor", weight: float = 0.5) -> None:
        if not name:
            raise ValueError("name must name an extra input of the output set, got ''")
        self.name = name
        self.weight = check_weight("weight", weight)

    def params(self) -> dict[str, Any]:
        return {"name": self.name, "weight": self.weight}

    def compute(self, inputs: RewardInputs) -> Tensor:
        mask = inputs.extra(self.name)
        if mask.dtype != torch.bool:
            raise ValueError(
                f"MaskReward({self.name!r}) needs a bool mask, got extras[{self.name!r}] of "
                f"dtype {mask.dtype}"
            )
        return mask.to(inputs.reward_dtype()).mul_(self.weight)

    def __repr__(self) -> str:
        return f"MaskReward({self.name!r}, weight={self.weight})"


def neighbor_reward(
    instance: float = 1.0,
    neighbor: float = DEFAULT_NEIGHBOR_WEIGHT,
    uniformity: float = DEFAULT_UNIFORMITY_WEIGHT,
) -> Reward:
    """The unlabeled reward: ``instance`` for the other view of the same image, ``neighbor``
    for the query's reference-space neighbours, ``-uniformity * pi_old`` for every other output.

    ``neighbor`` and ``uniformity`` may be 0 (that part is left out), never negative or NaN.

    Examples:
        >>> neighbor_reward()
        AccuracyReward(weight=1.0) + MaskReward('neighbor', weight=0.5) + UniformityReward(...)
    """
    check_weight("instance", instance)
    check_weight("neighbor", neighbor, allow_zero=True)
    check_weight("uniformity", uniformity, allow_zero=True)
    parts: list[Reward | dict[str, Any]] = [AccuracyReward(instance)]
    if neighbor > 0:
        parts.append(MaskReward("neighbor", neighbor))
    if uniformity > 0:
        parts.append(UniformityReward(uniformity, form="policy"))
    return SumReward(parts) if len(parts) > 1 else AccuracyReward(instance)


def default_reward() -> Reward:
    """Accuracy + uniformity (-pi_old, lambda = 1): the combination the prototype found best."""
    return build_reward()


def build_reward(
    accuracy: float = 1.0, uniformity: float = DEFAULT_UNIFORMITY_WEIGHT, form: str = "policy"
) -> Reward:
    """Builds accuracy (+ uniformity when ``uniformity > 0``) from plain numbers (CLI flags).

    Examples:
        >>> build_reward(1.0, 0.0)
        AccuracyReward(weight=1.0)
    """
    check_weight("accuracy", accuracy)
    check_weight("uniformity", uniformity, allow_zero=True)
    if uniformity > 0:
        return AccuracyReward(accuracy) + UniformityReward(uniformity, form=form)
    return AccuracyReward(accuracy)
