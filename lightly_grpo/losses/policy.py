"""GRPO-RM over any output set: group -> policy logits -> rewards -> clipped surrogate."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lightly_grpo.losses.fused import fused_loss_on_similarities
from lightly_grpo.losses.grpo import (
    DEFAULT_BETA,
    DEFAULT_CLIP_EPS,
    GRPORMLoss,
    GRPOStats,
    check_estimator,
    estimator_weights,
    sample_draws,
)
from lightly_grpo.output_sets.base import (
    KeyedOutputSet,
    OutputGroup,
    OutputSet,
    output_set_from_config,
    sample_group,
)
from lightly_grpo.rewards import (
    AccuracyReward,
    Reward,
    RewardInputs,
    SumReward,
    UniformityReward,
    default_reward,
    reward_from_config,
)
from lightly_grpo.validation import (
    as_labels,
    check_embedding_shape,
    check_finite,
    check_labeled_batch,
)

#: Policy temperature of every GRPO-RM loss and of the cosine-prototype heads compared with it.
DEFAULT_TEMPERATURE = 0.1
#: Smallest policy temperature: cosine / tau stays far inside float32's range (|logit| <= 1e6).
MIN_TEMPERATURE = 1e-6


class GRPORMPolicyLoss(nn.Module):
    """The GRPO-RM criterion of a representation policy over a predefined output set.

    For a batch of query embeddings the output set gives each query a group of candidates (and
    which are correct); the policy is ``softmax(<normalize(z), k> / temperature)`` over the group,
    the reward scores every candidate, and :class:`GRPORMLoss` turns group-relative advantages into
    the clipped surrogate (plus the exact KL to a reference policy when ``beta > 0``). Wrong
    outputs never get a positive advantage (``docs/method.md``, "Advantages").

    Which estimator the group is (``estimator``, ``docs/method.md`` §7.1): ``"uniform"`` weights
    every output of the group 1 / G; with ``group_size=G`` smaller than the output set, G outputs
    per query are drawn without replacement from pi_old (Gumbel top-k), the correct ones always
    kept, and the policy, the ratio, pi_old inside the reward and the KL are all renormalised over
    that sample. ``"sampled"`` draws ``group_size`` outputs with replacement from pi_old (GRPO's
    group: duplicates allowed, a group whose draws are all correct or all wrong carries no signal)
    and weights each output by its share of the draws; ``"expected"`` weights each output by
    pi_old, the exact expectation of ``"sampled"``. With several inner steps on one batch, sample
    once (:meth:`sample_group_index`) and pass the same ``group_index`` to every step, as GRPO
    samples once per prompt.

    Args:
        output_set: The candidates (e.g. :class:`~lightly_grpo.output_sets.ClassPrototypes`), or
            its config dict.
        temperature: tau > 0; logits are cosine / tau, bounded by 1 / tau.
        reward: Reward object (or its config); default accuracy + uniformity (-pi_old, lambda = 1).
        clip_eps: PPO clip range (acts only with old logits from an earlier inner step).
        beta: Weight of the exact KL to the reference policy (needs ``ref_embeddings``).
        group_size: ``"uniform"``: None enumerates the whole set, an integer G samples G outputs
            per query without replacement; ``"sampled"``: the number of draws G (>= 2, needed);
            ``"expected"``: must be None.
        validate: Check every batch for NaN/inf embeddings and out-of-range labels (one host
            synchronisation per call); set False in a GPU loop that cannot afford it.
        compile_math: ``torch.compile`` the fused reward/advantage/gradient math of the default
            reward (fewer kernel launches on a GPU; compiles once per batch shape).
        estimator: ``"uniform"``, ``"sampled"`` or ``"expected"`` (above).
        normalize_std: Divide advantages by the group's standard deviation (GRPO); False gives
            Dr. GRPO's ``r - mean``.

    Examples:
        >>> from lightly_grpo.output_sets import ClassPrototypes
        >>> criterion = GRPORMPolicyLoss(ClassPrototypes(num_classes=10, embedding_size=16))
        >>> loss = criterion(torch.randn(8, 16, requires_grad=True), torch.randint(0, 10, (8,)))
    """

    def __init__(
        self,
        output_set: OutputSet | dict[str, Any],
        temperature: float = DEFAULT_TEMPERATURE,
        reward: Reward | dict[str, Any] | None = None,
        clip_eps: float = DEFAULT_CLIP_EPS,
        beta: float = DEFAULT_BETA,
        group_size: int | None = None,
        validate: bool = True,
        compile_math: bool = False,
        estimator: str = "uniform",
        normalize_std: bool = True,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if temperature == float("inf"):
            raise ValueError(f"temperature must be finite, got {temperature}")
        if temperature < MIN_TEMPERATURE:
            # Logits are cosine / tau: below this they overflow float32 (|logit| > 3e38 * tau).
            raise ValueError(
                f"temperature must be >= {MIN_TEMPERATURE} (logits are cosine / temperature), "
                f"got {temperature}"
            )
        if isinstance(output_set, dict):
            output_set = output_set_from_config(output_set)
        if not isinstance(output_set, OutputSet):
            raise ValueError(f"output_set must be an OutputSet, got {type(output_set).__name__}")
        check_estimator(estimator)
        if estimator == "sampled":
            if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
                raise ValueError(
                    "estimator='sampled' needs group_size = the number of draws per query, an "
                    f"integer >= 2 (one draw has no group to compare with), got {group_size!r}"
                )
        elif estimator == "expected" and group_size is not None:
            raise ValueError(
                "estimator='expected' weights the whole output set by pi_old; group_size must be "
                f"None, got {group_size!r}"
            )
        elif group_size is not None and not 2 <= group_size <= output_set.num_outputs:
            raise ValueError(
                f"group_size must be in [2, {output_set.num_outputs}] or None, got {group_size}"
            )
        self.output_set = output_set
        self.temperature = float(temperature)
        self.reward = reward_from_config(reward) if reward is not None else default_reward()
        self.grpo = GRPORMLoss(clip_eps=clip_eps, beta=beta, normalize_std=normalize_std)
        self.group_size = group_size
        self.validate = validate
        self.compile_math = compile_math
        self.estimator = estimator

    @property
    def beta(self) -> float:
        return self.grpo.beta

    def config(self) -> dict[str, Any]:
        """Plain-dict hyperparameters (output set and reward included) that rebuild this loss."""
        return {
            "output_set": self.output_set.config(),
            "temperature": self.temperature,
            "reward": self.reward.config(),
            "clip_eps": self.grpo.clip_eps,
            "beta": self.grpo.beta,
            "group_size": self.group_size,
            "validate": self.validate,
            "compile_math": self.compile_math,
            "estimator": self.estimator,
            "normalize_std": self.grpo.normalize_std,
        }

    # ------------------------------------------------------------------ groups and logits
    def _group(
        self, embeddings: Tensor, labels: Tensor | None, items: Tensor | None = None
    ) -> OutputGroup:
        check_embedding_shape(embeddings, getattr(self.output_set, "embedding_size", None))
        if labels is not None:
            labels = as_labels(labels, embeddings.device)
        if self.validate:
            if labels is not None and self.output_set.requires_labels:
                keys = getattr(self.output_set, "weight", None)
                check_labeled_batch(
                    embeddings, labels, self.output_set.num_outputs, keys, keys_name="prototypes"
                )
            else:
                check_finite({"embeddings": embeddings})
        return self.output_set.group(embeddings, labels, items)

    def logits(
        self, embeddings: Tensor, labels: Tensor | None = None, items: Tensor | None = None
    ) -> Tensor:
        """Policy logits over each query's whole group, shape (B, G_full)."""
        if isinstance(self.output_set, KeyedOutputSet):  # the group is every key: no labels needed
            return self.output_set.similarities(embeddings) / self.temperature
        return self.output_set.group(embeddings, labels, items).similarities / self.temperature

    @torch.no_grad()
    def old_policy(
        self, embeddings: Tensor, labels: Tensor | None = None, items: Tensor | None = None
    ) -> OutputGroup:
        """The whole group of every query without gradient: one call gives the old logits
        (``similarities / temperature``), the correct mask for sampling and the indices the
        reference policy is scored on."""
        return self.output_set.group(embeddings.detach(), labels, items)

    @torch.no_grad()
    def sample_group_index(self, old_logits: Tensor, correct: Tensor) -> Tensor | None:
        """Indices (B, G) of a group sampled from old logits over the whole set (None: none):
        without replacement (``"uniform"`` with ``group_size``), or the draws with replacement
        of ``"sampled"``.

        Args:
            old_logits: Old-policy logits over each query's whole group (B, G_full).
            correct: The correct mask of that group (B, G_full), always kept in a sample without
                replacement.
        """
        if self.estimator == "sampled":
            assert self.group_size is not None
            return sample_draws(old_logits, self.group_size)
        if self.group_size is None or self.group_size >= old_logits.shape[1]:
            return None
        return sample_group(old_logits, correct, self.group_size)

    @torch.no_grad()
    def reference_logits(self, ref_embeddings: Tensor, group: OutputGroup) -> Tensor:
        """Reference-policy logits (no gradient) over the candidates of ``group``
        (from :meth:`old_policy`)."""
        return self.output_set.reference_similarities(ref_embeddings, group) / self.temperature

    # ------------------------------------------------------------------ the loss
    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor | None = None,
        old_logits: Tensor | None = None,
        ref_logits: Tensor | None = None,
        group_index: Tensor | None = None,
        items: Tensor | None = None,
    ) -> Tensor:
        """Computes the loss.

        Args:
            embeddings: Embeddings of shape (B, D) (normalised inside).
            labels: Class labels (B,) for labeled output sets, else None.
            old_logits: Old-policy logits over the whole group (B, G_full), e.g. from
                :meth:`logits` at the first of several inner steps; None for one step.
            ref_logits: Reference-policy logits over the whole group (:meth:`reference_logits`),
                needed when beta > 0.
            group_index: A sampled group (:meth:`sample_group_index`) to reuse; None samples one
                (when ``group_size`` is set).
            items: Dataset indices (B,) of the rows, for output sets that need them
                (``output_set.requires_items``, e.g. neighbours), else None.
        """
        return self._compute(embeddings, labels, old_logits, ref_logits, group_index, False, items)[
            0
        ]

    def forward_with_stats(
        self,
        embeddings: Tensor,
        labels: Tensor | None = None,
        old_logits: Tensor | None = None,
        ref_logits: Tensor | None = None,
        group_index: Tensor | None = None,
        items: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Like ``forward``; also returns detached statistics (reward, entropy, accuracy, ...)."""
        return self._compute(embeddings, labels, old_logits, ref_logits, group_index, True, items)

    def _compute(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        old_logits: Tensor | None,
        ref_logits: Tensor | None,
        group_index: Tensor | None,
        with_stats: bool,
        items: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if self.grpo.beta > 0 and ref_logits is None:
            raise ValueError(
                f"beta={self.grpo.beta} > 0 needs ref_logits (the reference policy's logits, "
                "e.g. from reference_logits(...)); without them the KL term would be dropped"
            )
        if self.validate and (old_logits is not None or ref_logits is not None):
            # Before the rewards read them: a NaN here is the caller's old or reference policy.
            check_finite({"old_logits": old_logits, "ref_logits": ref_logits})
        group = self._group(embeddings, labels, items)
        shape = group.similarities.shape
        for name, other in (("old_logits", old_logits), ("ref_logits", ref_logits)):
            if other is not None and other.shape != shape:
                raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(other.shape)}")
        fused = self._fused_weights()
        if (
            fused is not None
            and self.estimator == "uniform"
            and self.grpo.normalize_std
            and old_logits is None
            and group_index is None
            and (self.group_size is None or self.group_size >= group.similarities.shape[1])
            and self.grpo.beta == 0
            and group.positive is None
        ):
            # The default path: the fused loss divides by the temperature itself, so autograd
            # records no separate division (one launch fewer each way).
            return self._fused(group.similarities, group.correct, fused, with_stats)
        logits = group.similarities / self.temperature
        policy_old = logits.detach() if old_logits is None else old_logits.detach()
        if group_index is None:
            group_index = self.sample_group_index(policy_old, group.correct)
        weights = None
        if self.estimator != "uniform":
            # The group stays the whole set; the draws (or pi_old) become its weights.
            weights = estimator_weights(self.estimator, policy_old, group_index)
            group_index = None
        # Accuracy of the argmax over the whole set, before any sampling.
        accuracy = (
            group.correct.gather(1, logits.detach().argmax(dim=1, keepdim=True)).float().mean()
            if with_stats
            else None
        )
        if group_index is not None:
            group = group.select(group_index)
            logits, policy_old = logits.gather(1, group_index), policy_old.gather(1, group_index)
            ref_logits = None if ref_logits is None else ref_logits.gather(1, group_index)
        rewards = self.reward(
            RewardInputs(
                correct=group.correct,
                old_logits=policy_old,
                similarities=group.similarities.detach(),
                extras=group.extras,
                positive=group.positive,
            )
        )
        old = None if old_logits is None else policy_old
        # Positives (neighbours) are exempt from the cap on wrong outputs' advantages.
        rewarded = group.rewarded()
        if accuracy is None:
            return self.grpo(
                logits, rewards, old, ref_logits, correct=rewarded, weights=weights
            ), {}
        loss, stats = self.grpo.forward_with_stats(
            logits, rewards, old, ref_logits, correct=rewarded, weights=weights
        )
        return loss, {**stats.as_dict(), "accuracy": accuracy}

    def _fused_weights(self) -> tuple[float, float] | None:
        """(accuracy, uniformity) weights when the reward is one the fused kernel computes."""
        rewards = self.reward.rewards if isinstance(self.reward, SumReward) else [self.reward]
        # Exact types: a subclass may override compute(), which the fused math would ignore.
        first, *rest = rewards
        if type(first) is not AccuracyReward:
            return None
        if not rest:
            return first.weight, 0.0
        second = rest[0]
        if len(rest) == 1 and type(second) is UniformityReward and second.form == "policy":
            return first.weight, second.weight
        return None

    def _fused(
        self,
        similarities: Tensor,
        correct: Tensor,
        weights: tuple[float, float],
        with_stats: bool,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        # Finite embeddings and keys (checked above) give finite logits: no second sync.
        loss, log_probs, rewards = fused_loss_on_similarities(
            similarities,
            correct,
            self.temperature,
            weights[0],
            weights[1],
            self.grpo.adv_eps,
            with_stats=with_stats,
            compile_math=self.compile_math,
        )
        if not with_stats:
            return loss, {}
        assert log_probs is not None and rewards is not None
        # Accuracy of the argmax of the logits (as on the general path), over the whole set.
        logits = similarities.detach() / self.temperature
        accuracy = correct.gather(1, logits.argmax(dim=1, keepdim=True)).float().mean()
        zero = similarities.new_zeros(())  # one inner step, no reference: nothing clips, no KL
        stats = GRPOStats.from_policy(log_probs, rewards, clip_fraction=zero, kl=zero)
        return loss, {**stats.as_dict(), "accuracy": accuracy}
