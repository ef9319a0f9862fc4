"""The GRPO-RM objective on policy logits (``docs/method.md``).

The policy of a representation model is a softmax over the similarities between a query embedding
and the keys of a predefined output set. Given per-output rewards, the loss is GRPO's clipped
group-relative surrogate with an optional exact KL term against a reference policy.

The forward and backward passes are written as one ``torch.autograd.Function`` with the closed-form
gradient (with rho = 1 the gradient on the logits is (pi * sum(A) - A) / (B * G), which is
-A / (B * G) when the advantages sum to zero), which makes the loss about as cheap as cross-entropy
instead of the ~5x that a chain of autograd ops costs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

from lightly_grpo.validation import check_finite


def group_advantages(
    rewards: Tensor, eps: float = 1e-6, correct: Tensor | None = None, normalize: bool = True
) -> Tensor:
    """Normalises rewards within each group (row): ``(r - mean) / (std + eps)``.

    A group whose rewards are all equal carries no signal: its advantages are exactly 0 (never NaN).
    The standard deviation is the population one (``correction=0``), so any group size is valid.

    Args:
        rewards: Rewards of shape (batch_size, group_size).
        eps: Added to the standard deviation.
        correct: Optional boolean mask of the correct outputs. When given, every other (wrong)
            output's advantage is capped at 0: rewards are compared within the group, so a wrong
            output whose reward lies above the group mean would otherwise be pushed up.
        normalize: Divide by ``std + eps``; False gives Dr. GRPO's ``r - mean`` (Liu et al.,
            2025), which does not favour groups of low reward variance.

    Returns:
        Advantages of the same shape; without ``correct`` they sum to zero in every row.

    Examples:
        >>> group_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]]))[1]
        tensor([0., 0., 0., 0.])
    """
    std, mean = torch.std_mean(rewards, dim=-1, keepdim=True, correction=0)
    # Exact equality, not std == 0: the mean of equal floats is not always exactly that float.
    low, high = rewards.aminmax(dim=-1, keepdim=True)
    # bool / float promotes inside the one division kernel (no separate cast pass).
    scale = torch.div(high != low, std + eps) if normalize else (high != low).to(rewards.dtype)
    advantages = (rewards - mean).mul_(scale)
    return advantages if correct is None else cap_wrong_advantages(advantages, correct)


def cap_wrong_advantages(advantages: Tensor, correct: Tensor) -> Tensor:
    """``min(A, 0)`` for every output that is not correct; correct outputs keep their advantage.

    Examples:
        >>> correct = torch.tensor([[True, False, False]])
        >>> cap_wrong_advantages(torch.tensor([[1.0, 0.5, -1.5]]), correct)
        tensor([[ 1.0000,  0.0000, -1.5000]])
    """
    if correct.shape != advantages.shape or correct.dtype != torch.bool:
        raise ValueError(
            f"correct must be a bool mask of shape {tuple(advantages.shape)}, got "
            f"{correct.dtype} {tuple(correct.shape)}"
        )
    return torch.where(correct, advantages, advantages.clamp_max(0.0))


#: How a query's group is weighted (``docs/method.md`` §7.1): every output once (``uniform``),
#: the counts of draws with replacement from pi_old (``sampled``), or pi_old itself
#: (``expected``, the exact expectation of ``sampled``).
ESTIMATORS = ("uniform", "sampled", "expected")


def weighted_advantages(
    rewards: Tensor,
    weights: Tensor,
    eps: float = 1e-6,
    correct: Tensor | None = None,
    normalize: bool = True,
) -> Tensor:
    """Advantages of a weighted group: ``(r - mu) / (sigma + eps)`` with the weighted mean and
    standard deviation over the support (``weights > 0``), 0 outside it.

    A group whose rewards are all equal on its support (all draws correct, or all wrong) gets 0.
    With ``weights = 1 / G`` this is :func:`group_advantages`.

    Args:
        rewards: Rewards (B, G).
        weights: Non-negative weights (B, G), each row summing to 1.
        eps: Added to the standard deviation.
        correct: Optional bool mask of the correct outputs: wrong outputs are capped at 0.
        normalize: Divide by ``sigma + eps`` (False: Dr. GRPO's ``r - mu``).

    Examples:
        >>> rewards = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
        >>> weights = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])  # 2nd: all draws correct
        >>> weighted_advantages(rewards, weights, eps=0.0)
        tensor([[ 1., -1.,  0.],
                [ 0.,  0.,  0.]])
    """
    support = weights > 0
    mean = (weights * rewards).sum(dim=-1, keepdim=True)
    centred = rewards - mean
    informative = ~degenerate_groups(rewards, weights).unsqueeze(1) & support
    if normalize:
        std = (weights * centred.square()).sum(dim=-1, keepdim=True).sqrt()
        centred = centred / (std + eps)
    advantages = torch.where(informative, centred, torch.zeros_like(centred))
    return advantages if correct is None else cap_wrong_advantages(advantages, correct)


def check_estimator(estimator: str) -> str:
    """``estimator`` if it is one of :data:`ESTIMATORS`, else ValueError naming it."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    return estimator


@torch.no_grad()
def sample_draws(old_logits: Tensor, num_draws: int) -> Tensor:
    """``num_draws`` outputs per query drawn with replacement from ``softmax(old_logits)``,
    shape (B, num_draws): GRPO's sampled group.

    Examples:
        >>> draws = sample_draws(torch.tensor([[0.0, -1e9], [-1e9, 0.0]]), 3)
        >>> draws.tolist()
        [[0, 0, 0], [1, 1, 1]]
    """
    probs = torch.softmax(old_logits.float(), dim=-1)
    return torch.multinomial(probs, num_draws, replacement=True)


@torch.no_grad()
def estimator_weights(
    estimator: str, old_logits: Tensor, draws: Tensor | None = None
) -> Tensor | None:
    """The group weights (B, G) of ``estimator`` (None for ``"uniform"``: 1 / G each).

    Args:
        estimator: One of :data:`ESTIMATORS`.
        old_logits: Old-policy logits over the group (B, G).
        draws: For ``"sampled"``: the drawn outputs (B, num_draws) from :func:`sample_draws`.

    Examples:
        >>> logits = torch.zeros(1, 4)
        >>> estimator_weights("expected", logits).tolist()
        [[0.25, 0.25, 0.25, 0.25]]
        >>> estimator_weights("sampled", logits, torch.tensor([[2, 2, 0, 3]])).tolist()
        [[0.25, 0.0, 0.5, 0.25]]
    """
    check_estimator(estimator)
    if estimator == "uniform":
        return None
    if estimator == "expected":
        return torch.softmax(old_logits.detach(), dim=-1)
    if draws is None:
        raise ValueError("estimator='sampled' needs the draws (sample_draws(old_logits, G))")
    counts = torch.zeros_like(old_logits, dtype=torch.float32)
    counts.scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float32))
    return counts.div_(draws.shape[1]).to(old_logits.dtype)


def degenerate_groups(rewards: Tensor, weights: Tensor | None = None) -> Tensor:
    """Boolean mask (batch_size,) of groups whose rewards are all exactly equal (on the support
    ``weights > 0`` when weights are given)."""
    if weights is None:
        low, high = rewards.aminmax(dim=-1)
        return low == high
    outside = weights <= 0
    inf = torch.finfo(rewards.dtype).max
    low = rewards.masked_fill(outside, inf).amin(dim=-1)
    high = rewards.masked_fill(outside, -inf).amax(dim=-1)
    return low == high


@dataclass
class GRPOStats:
    """Detached per-batch statistics of one GRPO-RM loss evaluation (for logging).

    Attributes:
        mean_reward: Policy-weighted reward, E_{i ~ pi}[r_i], averaged over the batch.
        entropy: Mean entropy of the policy (nats).
        clip_fraction: Share of (query, output) pairs whose ratio lies outside [1 - eps, 1 + eps].
        degenerate_fraction: Share of groups with all-equal rewards (they carry no signal).
        kl: Mean KL(pi_theta || pi_ref), 0 when no reference logits are given.
    """

    mean_reward: Tensor
    entropy: Tensor
    clip_fraction: Tensor
    degenerate_fraction: Tensor
    kl: Tensor

    @classmethod
    @torch.no_grad()
    def from_policy(
        cls,
        log_probs: Tensor,
        rewards: Tensor,
        clip_fraction: Tensor,
        kl: Tensor,
        weights: Tensor | None = None,
    ) -> GRPOStats:
        """Statistics of a policy given its log-probabilities over the group and the rewards
        (degenerate groups judged on the support of ``weights`` when given)."""
        probs = log_probs.exp()
        return cls(
            mean_reward=(probs * rewards).sum(dim=-1).mean(),
            entropy=-(probs * log_probs).sum(dim=-1).mean(),
            clip_fraction=clip_fraction,
            degenerate_fraction=degenerate_groups(rewards, weights).float().mean(),
            kl=kl,
        )

    def as_dict(self, prefix: str = "") -> dict[str, Tensor]:
        """Returns the statistics as a flat dict, keys prefixed with ``prefix``."""
        return {
            f"{prefix}reward": self.mean_reward,
            f"{prefix}entropy": self.entropy,
            f"{prefix}clip_fraction": self.clip_fraction,
            f"{prefix}degenerate_fraction": self.degenerate_fraction,
            f"{prefix}kl": self.kl,
        }


#: Upper bound of log(pi / pi_old) before exp (rho <= e^20): keeps the ratio finite in float32.
MAX_LOG_RATIO = 20.0
#: Smallest ``adv_eps``: keeps ``1 / (std + eps)`` finite in float32.
MIN_ADV_EPS = 1e-12
#: Largest reward magnitude: group means and standard deviations stay finite in float32.
MAX_ABS_REWARD = 1e30
#: Floor of the reference log-probabilities in the KL: exp(-1e4) is 0, and a finite floor keeps
#: ``log pi - log pi_ref`` finite for a reference with logits far apart (e.g. +-3e38).
MIN_REF_LOG_PROB = -1e4
#: Dual-clip constant c: for a negative advantage the surrogate is max(min(...), c * A).
DUAL_CLIP = 3.0


class _GRPOSurrogate(torch.autograd.Function):
    """Clipped group-relative surrogate with an exact closed-form gradient on the logits.

    Per query b and output i, with pi = softmax(logits), rho_i = pi_i / pi_old_i and advantages A:
        s_i = min(rho_i A_i, clip(rho_i, 1 - eps, 1 + eps) A_i), and for A_i < 0 at least c A_i
        loss = -1/B sum_b sum_i w_i s_i + beta/B sum_b KL(pi_b || pi_ref_b)
    with group weights w (1 / G each when none are given).
    d s_i / d logit_j = c_i A_i rho_i (delta_ij - pi_j), where c_i = 1 when the unclipped term is
    the active one, and d KL / d logit_j = pi_j (log pi_j - log pi_ref_j - KL).
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        logits: Tensor,
        advantages: Tensor,
        old_log_probs: Tensor | None,
        ref_log_probs: Tensor | None,
        clip_eps: float,
        beta: float,
        weights: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        batch_size, group_size = logits.shape
        scale = 1.0 / (batch_size * group_size)
        log_probs = torch.log_softmax(logits, dim=-1)
        probs = log_probs.exp()
        if weights is not None:
            # Weighted groups (sampled or expected estimators): the weight carries 1 / G.
            scale = 1.0 / batch_size
            advantages = advantages * weights
        if old_log_probs is None:
            # One inner step: pi_old is pi_theta without gradient, so rho = 1, nothing clips and
            # the surrogate is sum(A); the gradient is (pi * sum_i A_i - A) / (B G).
            loss = advantages.sum().mul_(-scale)
            grad = probs * advantages.sum(dim=-1, keepdim=True).mul_(scale)
            grad.sub_(advantages, alpha=scale)
            clip_count = logits.new_zeros(())
        else:
            # The log-ratio is bounded before exp: an old policy far from the current one (e.g.
            # old logits of 100 against 0) would otherwise give rho = inf and a NaN gradient.
            ratio = (log_probs - old_log_probs).clamp_(max=MAX_LOG_RATIO).exp_()
            low, high = 1.0 - clip_eps, 1.0 + clip_eps
            too_high, too_low = ratio > high, ratio < low
            clip_count = (too_high | too_low).sum()
            # min(rho A, clip(rho) A) takes the clipped (constant) branch only when it is smaller.
            # Dual clip (Ye et al., 2020): for A < 0 the objective is also bounded below by
            # DUAL_CLIP * A, so a large rho on a bad output cannot dominate the loss.
            positive, negative = advantages > 0, advantages < 0
            dual = negative & (ratio > DUAL_CLIP)
            inactive = (too_high & positive) | (too_low & negative) | dual
            # With weights, `advantages` is w * A: w >= 0 leaves every sign test above unchanged.
            unclipped = ratio * advantages
            clipped = torch.where(dual, DUAL_CLIP * advantages, ratio.clamp(low, high) * advantages)
            surrogate = torch.where(inactive, clipped, unclipped)
            loss = surrogate.sum().mul_(-scale)
            weighted = unclipped.masked_fill_(inactive, 0.0)
            grad = probs * weighted.sum(dim=-1, keepdim=True).mul_(scale)
            grad.sub_(weighted, alpha=scale)
        if ref_log_probs is not None and beta > 0:
            log_ratio_ref = log_probs - ref_log_probs
            kl_per_query = (probs * log_ratio_ref).sum(dim=-1, keepdim=True)
            loss = loss + beta * kl_per_query.sum() / batch_size
            grad.addcmul_(probs, log_ratio_ref.sub_(kl_per_query), value=beta / batch_size)
            kl = kl_per_query.mean()
        else:
            kl = logits.new_zeros(())
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(log_probs, clip_count, kl)
        return loss, log_probs, clip_count, kl

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor, *_unused: Tensor) -> tuple[Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return grad * grad_loss, None, None, None, None, None, None


#: PPO clip range of every GRPO-RM loss (acts only with several inner steps on one batch).
DEFAULT_CLIP_EPS = 0.2
#: Weight of the reference KL: 0 drops the reference model, as the paper does.
DEFAULT_BETA = 0.0


class GRPORMLoss(nn.Module):
    """GRPO-RM loss over policy logits and per-output rewards.

    The policy is ``softmax(logits)`` over a group of G outputs per query. Rewards are turned into
    group-relative advantages (zero for groups with all-equal rewards) and the clipped surrogate is
    maximised; the reference model's KL is optional (``beta = 0`` by default, as in the paper).

    Args:
        clip_eps: PPO clip range epsilon (>= 0). Only acts when ``old_logits`` differ from the
            current logits, i.e. with several inner steps on the same batch.
        beta: Weight of the exact KL(pi_theta || pi_ref) over the group (>= 0); needs
            ``ref_logits``.
        adv_eps: Added to the group standard deviation when normalising advantages.
        normalize_std: Divide advantages by the group's standard deviation; False gives Dr.
            GRPO's ``r - mean`` (Liu et al., 2025).

    A group may be weighted (``weights=`` of :meth:`forward`, see :func:`estimator_weights`):
    the surrogate is then ``sum_i w_i s_i`` per query, and the mean and standard deviation of the
    advantages are the weighted ones over the support ``w > 0``.

    Examples:
        >>> criterion = GRPORMLoss(clip_eps=0.2)
        >>> logits = torch.randn(8, 10, requires_grad=True)  # similarity / temperature
        >>> rewards = torch.nn.functional.one_hot(torch.randint(0, 10, (8,)), 10).float()
        >>> loss = criterion(logits, rewards)
        >>> loss.backward()
    """

    def __init__(
        self,
        clip_eps: float = DEFAULT_CLIP_EPS,
        beta: float = DEFAULT_BETA,
        adv_eps: float = 1e-6,
        normalize_std: bool = True,
    ) -> None:
        super().__init__()
        if not clip_eps >= 0:
            raise ValueError(f"clip_eps must be >= 0, got {clip_eps}")
        if not 0 <= beta < float("inf"):
            raise ValueError(f"beta must be a finite number >= 0, got {beta}")
        if not clip_eps < float("inf"):
            raise ValueError(f"clip_eps must be finite, got {clip_eps}")
        if not MIN_ADV_EPS <= adv_eps < math.inf:
            # Smaller than this, (r - mean) / (std + eps) overflows for groups whose rewards
            # differ by a few ulps (std ~ 1e-45): advantages of 1e38 and a NaN loss.
            raise ValueError(f"adv_eps must be finite and >= {MIN_ADV_EPS}, got {adv_eps}")
        if not isinstance(normalize_std, bool):
            raise ValueError(f"normalize_std must be True or False, got {normalize_std!r}")
        self.clip_eps = float(clip_eps)
        self.beta = float(beta)
        self.adv_eps = float(adv_eps)
        self.normalize_std = normalize_std

    def forward(
        self,
        logits: Tensor,
        rewards: Tensor,
        old_logits: Tensor | None = None,
        ref_logits: Tensor | None = None,
        correct: Tensor | None = None,
        weights: Tensor | None = None,
    ) -> Tensor:
        """Computes the loss.

        Args:
            logits: Policy logits of shape (batch_size, group_size), already divided by the
                temperature.
            rewards: Rewards of the same shape (treated as constants).
            old_logits: Logits of the old policy (same shape, detached). None means one inner
                step: the old policy is the current one without gradient (rho = 1).
            ref_logits: Logits of the reference policy; required when ``beta > 0``.
            correct: Optional boolean mask (same shape) of the correct outputs; when given, no
                wrong output gets a positive advantage (see :func:`group_advantages`).
            weights: Optional group weights (same shape, >= 0, rows summing to 1), e.g.
                :func:`estimator_weights`; None weights every output 1 / G.

        Returns:
            The scalar loss.
        """
        return self._loss(logits, rewards, old_logits, ref_logits, correct, weights)[0]

    def forward_with_stats(
        self,
        logits: Tensor,
        rewards: Tensor,
        old_logits: Tensor | None = None,
        ref_logits: Tensor | None = None,
        correct: Tensor | None = None,
        weights: Tensor | None = None,
    ) -> tuple[Tensor, GRPOStats]:
        """Like ``forward`` but also returns detached :class:`GRPOStats` for logging."""
        loss, log_probs, clip_count, kl = self._loss(
            logits, rewards, old_logits, ref_logits, correct, weights
        )
        clip_fraction = clip_count.float() / logits.numel()
        return loss, GRPOStats.from_policy(log_probs, rewards, clip_fraction, kl, weights)

    def _loss(
        self,
        logits: Tensor,
        rewards: Tensor,
        old_logits: Tensor | None,
        ref_logits: Tensor | None,
        correct: Tensor | None = None,
        weights: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        self._validate(logits, rewards, old_logits, ref_logits, weights)
        # float16 / bfloat16 logits (mixed precision) are scored in float32: rewards, softmax and
        # ratios overflow or lose the advantages in half precision. The gradient flows back
        # through the cast in the logits' own dtype.
        compute = torch.promote_types(logits.dtype, torch.float32)
        rewards = rewards.detach().to(compute)
        if weights is None:
            advantages = group_advantages(rewards, self.adv_eps, correct, self.normalize_std)
        else:
            weights = weights.detach().to(compute)
            advantages = weighted_advantages(
                rewards, weights, self.adv_eps, correct, self.normalize_std
            )
        old_log_probs = (
            None
            if old_logits is None
            else torch.log_softmax(old_logits.detach().to(compute), dim=-1)
        )
        ref_log_probs = (
            torch.log_softmax(ref_logits.detach().to(compute), dim=-1).clamp_(min=MIN_REF_LOG_PROB)
            if ref_logits is not None and self.beta > 0
            else None
        )
        return _GRPOSurrogate.apply(
            logits.to(compute),
            advantages,
            old_log_probs,
            ref_log_probs,
            self.clip_eps,
            self.beta,
            weights,
        )

    def _validate(
        self,
        logits: Tensor,
        rewards: Tensor,
        old_logits: Tensor | None,
        ref_logits: Tensor | None,
        weights: Tensor | None = None,
    ) -> None:
        given = {"logits": logits, "rewards": rewards, "old_logits": old_logits}
        for name, value in {**given, "ref_logits": ref_logits, "weights": weights}.items():
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if logits.dim() != 2:
            raise ValueError(
                f"logits must have shape (batch_size, group_size), got {tuple(logits.shape)}"
            )
        if logits.shape[0] == 0 or logits.shape[1] == 0:
            raise ValueError(f"empty batch or group: logits have shape {tuple(logits.shape)}")
        others = {"rewards": rewards, "old_logits": old_logits, "ref_logits": ref_logits}
        for name, other in others.items():
            if other is not None and other.shape != logits.shape:
                raise ValueError(
                    f"{name} must have the shape of logits {tuple(logits.shape)}, "
                    f"got {tuple(other.shape)}"
                )
        if self.beta > 0 and ref_logits is None:
            raise ValueError(f"beta={self.beta} > 0 needs ref_logits (the reference policy)")
        if weights is not None:
            if weights.shape != logits.shape:
                raise ValueError(
                    f"weights must have the shape of logits {tuple(logits.shape)}, "
                    f"got {tuple(weights.shape)}"
                )
            w = weights.detach().double()
            sums = w.sum(dim=-1)
            # One read-back per step; the details below only on failure.
            valid = torch.isfinite(w).all() & (w >= 0).all() & ((sums - 1).abs() <= 1e-4).all()
            if not bool(valid):
                raise ValueError(
                    "weights must be finite, >= 0 and sum to 1 in every row, got row sums "
                    f"in [{float(sums.min()):.4g}, {float(sums.max()):.4g}] and minimum "
                    f"{float(w.min()):.4g}"
                )
        check_finite({"logits": logits, **others}, hint="check the embeddings and the temperature")
        largest = float(rewards.detach().abs().amax())
        if largest > MAX_ABS_REWARD:
            raise ValueError(
                f"rewards must lie within +-{MAX_ABS_REWARD:g} (their group mean and standard "
                f"deviation are computed in float32), got a reward of magnitude {largest:.3g}"
            )
