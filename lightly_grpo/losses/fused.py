"""The default labeled objective (accuracy + uniformity -pi_old, one inner step), fused.

Equal to ``GRPORMLoss()(logits, (AccuracyReward(a) + UniformityReward(lam))(...), correct=...)``
(tested), but the rewards, advantages and closed-form gradient share one softmax instead of three.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

from lightly_grpo.losses.grpo import cap_wrong_advantages, group_advantages
from lightly_grpo.validation import check_finite


def _accuracy_uniformity_math(
    logits: Tensor,
    correct: Tensor,
    accuracy_weight: float,
    uniformity_weight: float,
    adv_eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss, grad on logits, log_probs, rewards) of the fused objective; pure tensor ops, so
    ``torch.compile`` can turn it into a couple of kernels."""
    scale = 1.0 / logits.numel()
    log_probs = torch.log_softmax(logits, dim=-1)
    probs = log_probs.exp()
    if uniformity_weight > 0:
        rewards = torch.where(correct, accuracy_weight, probs * -uniformity_weight)
    else:
        rewards = correct.to(logits.dtype) * accuracy_weight
    advantages = group_advantages(rewards, adv_eps)
    if uniformity_weight > accuracy_weight:
        # Only then can a wrong output's -lam * pi_old lie above the group mean (docs/method.md):
        # cap those advantages at 0; they no longer sum to zero, so keep the pi * sum(A) term.
        advantages = cap_wrong_advantages(advantages, correct)
        grad = (probs * advantages.sum(dim=-1, keepdim=True) - advantages).mul_(scale)
        return -advantages.sum() * scale, grad, log_probs, rewards
    # With lam <= a every wrong advantage is <= 0 already (up to rounding, which the clamp below
    # removes). grad_j = (pi_j sum_i A_i - A_j) / (B G) and sum_i A_i = 0 here (centred rewards
    # times a per-row constant), so the pi term is dropped: one pass instead of three.
    advantages = torch.where(correct, advantages, advantages.clamp_max(0.0))
    grad = advantages * -scale
    return -advantages.sum() * scale, grad, log_probs, rewards


_COMPILED: dict[str, Any] = {}


def _compiled_math() -> Any:
    if "math" not in _COMPILED:
        _COMPILED["math"] = torch.compile(_accuracy_uniformity_math, dynamic=False)
    return _COMPILED["math"]


class _FusedAccuracyUniformity(torch.autograd.Function):
    """The default labeled objective in a few passes: one inner step (rho = 1), beta = 0, and
    rewards ``a * [correct] - lam * pi_old * [wrong]`` where pi_old is the current policy."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        logits: Tensor,
        correct: Tensor,
        accuracy_weight: float,
        uniformity_weight: float,
        adv_eps: float,
        compile_math: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        math = _compiled_math() if compile_math else _accuracy_uniformity_math
        loss, grad, log_probs, rewards = math(
            logits, correct, accuracy_weight, uniformity_weight, adv_eps
        )
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(log_probs, rewards)
        return loss, log_probs, rewards

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor, *_unused: Tensor) -> tuple[Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return grad * grad_loss, None, None, None, None, None


def fused_accuracy_uniformity_loss(
    logits: Tensor,
    correct: Tensor,
    accuracy_weight: float = 1.0,
    uniformity_weight: float = 1.0,
    adv_eps: float = 1e-6,
    validate: bool = True,
    compile_math: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """GRPO-RM loss for accuracy + uniformity (-pi_old) rewards with one inner step, fused.

    Args:
        logits: Policy logits (B, G), already divided by the temperature.
        correct: Boolean mask (B, G) of the correct outputs.
        accuracy_weight: Reward of a correct output.
        uniformity_weight: lambda of the -lambda * pi_old penalty on wrong outputs (0 disables it).
        adv_eps: Added to the group standard deviation.
        validate: Check the logits for NaN/inf (one host synchronisation); callers that already
            checked their inputs pass False.
        compile_math: Run the math through ``torch.compile`` (a few fused kernels instead of ~20
            on a GPU; the first call per shape compiles for seconds).

    Returns:
        (loss, log_probs, rewards); the last two detached, for statistics.

    Examples:
        >>> logits = torch.randn(4, 10, requires_grad=True)
        >>> correct = torch.nn.functional.one_hot(torch.tensor([1, 2, 3, 4]), 10).bool()
        >>> loss, _, _ = fused_accuracy_uniformity_loss(logits, correct)
        >>> loss.backward()
    """
    if logits.dim() != 2 or correct.shape != logits.shape:
        raise ValueError(
            f"logits and correct must share a (batch_size, group_size) shape, got "
            f"{tuple(logits.shape)} and {tuple(correct.shape)}"
        )
    if logits.numel() == 0:
        raise ValueError(f"empty batch or group: logits have shape {tuple(logits.shape)}")
    if validate:
        check_finite({"logits": logits})
    return _FusedAccuracyUniformity.apply(
        logits, correct, float(accuracy_weight), float(uniformity_weight), adv_eps, compile_math
    )
