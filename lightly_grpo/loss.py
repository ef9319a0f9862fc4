"""The GRPO-RM objective on policy logits (DESIGN.md section 1.2).

The policy of a representation model is a softmax over the similarities between a query embedding
and the keys of a predefined output set. Given per-output rewards, the loss is GRPO's clipped
group-relative surrogate with an optional exact KL term against a reference policy.

The forward and backward passes are written as one ``torch.autograd.Function`` with the closed-form
gradient (DESIGN.md 1.2: with rho = 1 the gradient on the logits is -A / (B * G)), which makes the
loss about as cheap as cross-entropy instead of the ~5x that a chain of autograd ops costs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx


def group_advantages(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """Normalises rewards within each group (row): ``(r - mean) / (std + eps)``.

    A group whose rewards are all equal carries no signal: its advantages are exactly 0 (never NaN).
    The standard deviation is the population one (``correction=0``), so a group of any size is valid.

    Args:
        rewards: Rewards of shape (batch_size, group_size).
        eps: Added to the standard deviation.

    Returns:
        Advantages of the same shape, summing to zero in every row.

    Examples:
        >>> group_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]]))[1]
        tensor([0., 0., 0., 0.])
    """
    centered = rewards - rewards.mean(dim=-1, keepdim=True)
    std = rewards.std(dim=-1, keepdim=True, correction=0)
    advantages = centered / (std + eps)
    degenerate = degenerate_groups(rewards).unsqueeze(-1)
    return advantages.masked_fill(degenerate, 0.0)


def degenerate_groups(rewards: Tensor) -> Tensor:
    """Boolean mask (batch_size,) of groups whose rewards are all exactly equal."""
    return (rewards == rewards[..., :1]).all(dim=-1)


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

    def as_dict(self, prefix: str = "") -> dict[str, Tensor]:
        """Returns the statistics as a flat dict, keys prefixed with ``prefix``."""
        return {
            f"{prefix}reward": self.mean_reward,
            f"{prefix}entropy": self.entropy,
            f"{prefix}clip_fraction": self.clip_fraction,
            f"{prefix}degenerate_fraction": self.degenerate_fraction,
            f"{prefix}kl": self.kl,
        }


class _GRPOSurrogate(torch.autograd.Function):
    """Clipped group-relative surrogate with an exact closed-form gradient on the logits.

    Per query b and output i, with pi = softmax(logits), rho_i = pi_i / pi_old_i and advantages A:
        s_i = min(rho_i A_i, clip(rho_i, 1 - eps, 1 + eps) A_i)
        loss = -1/B sum_b 1/G sum_i s_i + beta/B sum_b KL(pi_b || pi_ref_b)
    d s_i / d logit_j = c_i A_i rho_i (delta_ij - pi_j), where c_i = 1 when the unclipped term is the
    active one, and d KL / d logit_j = pi_j (log pi_j - log pi_ref_j - KL).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        logits: Tensor,
        advantages: Tensor,
        old_log_probs: Tensor | None,
        ref_log_probs: Tensor | None,
        clip_eps: float,
        beta: float,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        batch_size, group_size = logits.shape
        log_probs = torch.log_softmax(logits, dim=-1)
        probs = log_probs.exp()
        if old_log_probs is None:
            # One inner step: pi_old is pi_theta without gradient, so rho = 1 and nothing clips.
            ratio = torch.ones_like(logits)
            active = torch.ones_like(logits, dtype=torch.bool)
            clipped = torch.zeros_like(logits, dtype=torch.bool)
        else:
            ratio = torch.exp(log_probs - old_log_probs)
            low, high = 1.0 - clip_eps, 1.0 + clip_eps
            clipped = (ratio < low) | (ratio > high)
            # min(rho A, clip(rho) A) takes the clipped (constant) branch only when it is smaller.
            active = ~(((ratio > high) & (advantages > 0)) | ((ratio < low) & (advantages < 0)))
        surrogate = torch.where(
            active, ratio * advantages, ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * advantages
        )
        loss = -surrogate.sum() / (batch_size * group_size)
        # w_i = c_i A_i rho_i; grad_j = -(w_j - pi_j sum_i w_i) / (B G)
        weighted = torch.where(active, advantages * ratio, torch.zeros_like(ratio))
        grad = (probs * weighted.sum(dim=-1, keepdim=True) - weighted) / (batch_size * group_size)
        if ref_log_probs is not None and beta > 0:
            log_ratio_ref = log_probs - ref_log_probs
            kl_per_query = (probs * log_ratio_ref).sum(dim=-1, keepdim=True)
            loss = loss + beta * kl_per_query.sum() / batch_size
            grad = grad + (beta / batch_size) * probs * (log_ratio_ref - kl_per_query)
            kl = kl_per_query.mean()
        else:
            kl = logits.new_zeros(())
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(probs, clipped, kl)
        return loss, probs, clipped, kl

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_loss: Tensor, *_unused: Tensor
    ) -> tuple[Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return grad * grad_loss, None, None, None, None, None


def _check_finite(name: str, tensor: Tensor) -> None:
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(
            f"{name} contains {bad} NaN or inf value(s) (shape {tuple(tensor.shape)}); "
            "check the embeddings and the temperature"
        )


class GRPORMLoss(nn.Module):
    """GRPO-RM loss over policy logits and per-output rewards.

    The policy is ``softmax(logits)`` over a group of G outputs per query. Rewards are turned into
    group-relative advantages (zero for groups with all-equal rewards) and the clipped surrogate is
    maximised; the reference model's KL is optional (``beta = 0`` by default, as in the paper).

    Args:
        clip_eps: PPO clip range epsilon (>= 0). Only acts when ``old_logits`` differ from the
            current logits, i.e. with several inner steps on the same batch.
        beta: Weight of the exact KL(pi_theta || pi_ref) over the group (>= 0); needs ``ref_logits``.
        adv_eps: Added to the group standard deviation when normalising advantages.

    Examples:
        >>> criterion = GRPORMLoss(clip_eps=0.2)
        >>> logits = torch.randn(8, 10, requires_grad=True)  # similarity / temperature
        >>> rewards = torch.nn.functional.one_hot(torch.randint(0, 10, (8,)), 10).float()
        >>> loss = criterion(logits, rewards)
        >>> loss.backward()
    """

    def __init__(self, clip_eps: float = 0.2, beta: float = 0.0, adv_eps: float = 1e-6) -> None:
        super().__init__()
        if not clip_eps >= 0:
            raise ValueError(f"clip_eps must be >= 0, got {clip_eps}")
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if not adv_eps > 0:
            raise ValueError(f"adv_eps must be > 0, got {adv_eps}")
        self.clip_eps = float(clip_eps)
        self.beta = float(beta)
        self.adv_eps = float(adv_eps)

    def forward(
        self,
        logits: Tensor,
        rewards: Tensor,
        old_logits: Tensor | None = None,
        ref_logits: Tensor | None = None,
    ) -> Tensor:
        """Computes the loss.

        Args:
            logits: Policy logits of shape (batch_size, group_size), already divided by the
                temperature.
            rewards: Rewards of the same shape (treated as constants).
            old_logits: Logits of the old policy (same shape, detached). None means one inner
                step: the old policy is the current one without gradient (rho = 1).
            ref_logits: Logits of the reference policy; required when ``beta > 0``.

        Returns:
            The scalar loss.
        """
        return self.forward_with_stats(logits, rewards, old_logits, ref_logits)[0]

    def forward_with_stats(
        self,
        logits: Tensor,
        rewards: Tensor,
        old_logits: Tensor | None = None,
        ref_logits: Tensor | None = None,
    ) -> tuple[Tensor, GRPOStats]:
        """Like ``forward`` but also returns detached :class:`GRPOStats` for logging."""
        self._validate(logits, rewards, old_logits, ref_logits)
        rewards = rewards.detach().to(logits.dtype)
        advantages = group_advantages(rewards, self.adv_eps)
        old_log_probs = (
            None if old_logits is None else torch.log_softmax(old_logits.detach(), dim=-1)
        )
        ref_log_probs = (
            torch.log_softmax(ref_logits.detach(), dim=-1)
            if ref_logits is not None and self.beta > 0
            else None
        )
        loss, probs, clipped, kl = _GRPOSurrogate.apply(
            logits, advantages, old_log_probs, ref_log_probs, self.clip_eps, self.beta
        )
        with torch.no_grad():
            entropy = -(probs * torch.log(probs.clamp_min(1e-30))).sum(dim=-1).mean()
            stats = GRPOStats(
                mean_reward=(probs * rewards).sum(dim=-1).mean(),
                entropy=entropy,
                clip_fraction=clipped.float().mean(),
                degenerate_fraction=degenerate_groups(rewards).float().mean(),
                kl=kl,
            )
        return loss, stats

    def _validate(
        self,
        logits: Tensor,
        rewards: Tensor,
        old_logits: Tensor | None,
        ref_logits: Tensor | None,
    ) -> None:
        if logits.dim() != 2:
            raise ValueError(
                f"logits must have shape (batch_size, group_size), got {tuple(logits.shape)}"
            )
        if logits.shape[0] == 0 or logits.shape[1] == 0:
            raise ValueError(f"empty batch or group: logits have shape {tuple(logits.shape)}")
        for name, other in (("rewards", rewards), ("old_logits", old_logits)):
            if other is not None and other.shape != logits.shape:
                raise ValueError(
                    f"{name} must have the shape of logits {tuple(logits.shape)}, "
                    f"got {tuple(other.shape)}"
                )
        if ref_logits is not None and ref_logits.shape != logits.shape:
            raise ValueError(
                f"ref_logits must have the shape of logits {tuple(logits.shape)}, "
                f"got {tuple(ref_logits.shape)}"
            )
        if self.beta > 0 and ref_logits is None:
            raise ValueError(f"beta={self.beta} > 0 needs ref_logits (the reference policy)")
        _check_finite("logits", logits)
        _check_finite("rewards", rewards)
        if old_logits is not None:
            _check_finite("old_logits", old_logits)
        if ref_logits is not None:
            _check_finite("ref_logits", ref_logits)
