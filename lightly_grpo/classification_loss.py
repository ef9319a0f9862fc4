"""Drop-in GRPO-RM loss for labeled data, called like a pytorch-metric-learning proxy loss."""

from __future__ import annotations

from torch import Tensor, nn

from lightly_grpo.loss import (
    GRPORMLoss,
    GRPOStats,
    fused_accuracy_uniformity_loss,
)
from lightly_grpo.output_sets.base import sample_group
from lightly_grpo.output_sets.class_prototypes import (
    ClassPrototypes,
    check_batch,
    check_embedding_shape,
)
from lightly_grpo.rewards import (
    AccuracyReward,
    Reward,
    RewardInputs,
    SumReward,
    UniformityReward,
    default_reward,
)


class GRPORMClassificationLoss(nn.Module):
    """GRPO-RM with learnable class prototypes as the output set.

    The policy is ``softmax(<normalize(z), k_c> / temperature)`` over the classes; the correct
    output is the true class. Like pytorch-metric-learning's proxy losses (ProxyAnchor, ArcFace),
    the loss owns its proxies, so give its parameters to the optimizer (usually with a larger
    learning rate).

    Args:
        num_classes: Number of classes.
        embedding_size: Dimension of the embeddings.
        temperature: tau > 0; logits are cosine / tau, bounded by 1 / tau.
        reward: Reward object; default accuracy + uniformity (-pi_old, lambda = 1).
        clip_eps: PPO clip range (acts only with old logits from an earlier inner step).
        beta: Weight of the exact KL to the reference policy (needs ``ref_logits``).
        group_size: None enumerates every class; an integer G samples G classes per query without
            replacement from pi_old, always keeping the true class.
        validate: Check every batch for NaN/inf embeddings and out-of-range labels (one host
            synchronisation per call); set False in a GPU loop that cannot afford it.
        compile_math: ``torch.compile`` the fused reward/advantage/gradient math of the default
            reward (fewer kernel launches on a GPU; compiles once per batch shape).

    Examples:
        >>> criterion = GRPORMClassificationLoss(num_classes=10, embedding_size=128)
        >>> embeddings = torch.randn(32, 128, requires_grad=True)
        >>> labels = torch.randint(0, 10, (32,))
        >>> loss = criterion(embeddings, labels)
        >>> loss.backward()
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        temperature: float = 0.1,
        reward: Reward | None = None,
        clip_eps: float = 0.2,
        beta: float = 0.0,
        group_size: int | None = None,
        validate: bool = True,
        compile_math: bool = False,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if group_size is not None and not 2 <= group_size <= num_classes:
            raise ValueError(f"group_size must be in [2, {num_classes}] or None, got {group_size}")
        self.prototypes = ClassPrototypes(num_classes, embedding_size)
        self.temperature = float(temperature)
        self.reward = reward if reward is not None else default_reward()
        self.grpo = GRPORMLoss(clip_eps=clip_eps, beta=beta)
        self.group_size = group_size
        self.validate = validate
        self.compile_math = compile_math

    @property
    def num_classes(self) -> int:
        return self.prototypes.num_classes

    def init_prototypes(self, embeddings: Tensor, labels: Tensor) -> None:
        """Initialises each prototype to the normalised class mean of ``embeddings``."""
        self.prototypes.init_from_embeddings(embeddings, labels)

    def logits(self, embeddings: Tensor) -> Tensor:
        """Policy logits over all classes, shape (B, num_classes)."""
        return self.prototypes.similarities(embeddings) / self.temperature

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        old_logits: Tensor | None = None,
        ref_logits: Tensor | None = None,
    ) -> Tensor:
        """Computes the loss.

        Args:
            embeddings: Embeddings of shape (B, embedding_size) (normalised inside).
            labels: Integer class labels of shape (B,).
            old_logits: Old-policy logits over all classes (B, num_classes), e.g. from
                ``logits(...)`` at the first of several inner steps; None for one step.
            ref_logits: Reference-policy logits over all classes, needed when beta > 0.
        """
        return self._compute(embeddings, labels, old_logits, ref_logits, with_stats=False)[0]

    def forward_with_stats(
        self,
        embeddings: Tensor,
        labels: Tensor,
        old_logits: Tensor | None = None,
        ref_logits: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Like ``forward``; also returns detached statistics (reward, entropy, accuracy, ...)."""
        return self._compute(embeddings, labels, old_logits, ref_logits, with_stats=True)

    def _compute(
        self,
        embeddings: Tensor,
        labels: Tensor,
        old_logits: Tensor | None,
        ref_logits: Tensor | None,
        with_stats: bool,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        check_embedding_shape(embeddings, self.prototypes.embedding_size)
        if self.validate:
            check_batch(embeddings, labels, self.num_classes, self.prototypes.weight)
        group = self.prototypes.group(embeddings, labels)
        logits = group.similarities / self.temperature
        policy_old = logits.detach() if old_logits is None else old_logits.detach()
        if policy_old.shape != logits.shape:
            raise ValueError(
                f"old_logits must have shape {tuple(logits.shape)}, got {tuple(policy_old.shape)}"
            )
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean() if with_stats else None
        fused = self._fused_weights()
        if (
            fused is not None
            and old_logits is None
            and ref_logits is None
            and (self.group_size is None or self.group_size >= self.num_classes)
        ):
            return self._fused(logits, group.correct, fused, accuracy)
        sims, correct = group.similarities, group.correct
        if self.group_size is not None and self.group_size < self.num_classes:
            index = sample_group(policy_old, correct, self.group_size)
            logits, sims = logits.gather(1, index), sims.gather(1, index)
            correct, policy_old = correct.gather(1, index), policy_old.gather(1, index)
            ref_logits = None if ref_logits is None else ref_logits.gather(1, index)
        rewards = self.reward(
            RewardInputs(correct=correct, old_logits=policy_old, similarities=sims.detach())
        )
        old = None if old_logits is None else policy_old
        if accuracy is None:
            return self.grpo(logits, rewards, old, ref_logits), {}
        loss, stats = self.grpo.forward_with_stats(logits, rewards, old, ref_logits)
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
        logits: Tensor,
        correct: Tensor,
        weights: tuple[float, float],
        accuracy: Tensor | None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        # Finite embeddings and prototypes (checked above) give finite logits: no second sync.
        loss, log_probs, rewards = fused_accuracy_uniformity_loss(
            logits,
            correct,
            weights[0],
            weights[1],
            self.grpo.adv_eps,
            validate=False,
            compile_math=self.compile_math,
        )
        if accuracy is None:
            return loss, {}
        zero = logits.new_zeros(())  # one inner step, no reference: nothing clips, no KL
        stats = GRPOStats.from_policy(log_probs, rewards, clip_fraction=zero, kl=zero)
        return loss, {**stats.as_dict(), "accuracy": accuracy}
