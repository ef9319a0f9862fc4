"""The default labeled objective (accuracy + uniformity -pi_old, one inner step), fused.

Equal to ``GRPORMLoss()(logits, (AccuracyReward(a) + UniformityReward(lam))(...), correct=...)``
(tested), but the rewards, advantages and closed-form gradient share one softmax instead of three.
:func:`fused_loss_on_similarities` is the unchecked form the criteria call on their (already
validated) cosine similarities: it takes the temperature division and the statistics-only
outputs inside, so the default path costs about a dozen element-wise launches forward and two
backward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

from lightly_grpo.rewards import DEFAULT_UNIFORMITY_WEIGHT
from lightly_grpo.validation import check_finite


def _accuracy_uniformity_math(
    similarities: Tensor,
    correct: Tensor,
    accuracy_weight: float,
    uniformity_weight: float,
    adv_eps: float,
    temperature: float = 1.0,
    with_stats: bool = True,
) -> tuple[Tensor, Tensor, float, Tensor | None, Tensor | None]:
    """(loss, W, k, log_probs, rewards) of the fused objective on
    ``logits = similarities / temperature``; the gradient on ``similarities`` is ``W * k`` times
    the incoming gradient. Pure tensor ops, so ``torch.compile`` can turn it into a few kernels.

    Every op here is a kernel launch on a GPU, where the loss is launch-bound at typical sizes,
    so the math is arranged to need few: the division by the temperature is taken in here so that
    its backward folds into ``k``; log-probabilities and rewards (read only by statistics) are
    only computed ``with_stats`` (else None).
    """
    scale = 1.0 / similarities.numel()
    logits = similarities if temperature == 1.0 else similarities / temperature
    log_probs: Tensor | None = None
    if with_stats:
        log_probs = torch.log_softmax(logits, dim=-1)
        probs = log_probs.exp()
    else:
        probs = torch.softmax(logits, dim=-1)
    # Advantages are (r - mean) / (std + eps) with r = a [correct] - lam pi [wrong]. Scoring
    # r' = -r / lam = pi [wrong], -a / lam [correct] with eps / lam instead gives -A exactly (in
    # real arithmetic) from one masked_fill, no multiply; the loss -sum(A) / (B G) is then the
    # mean of -A: one reduction, no negate or scale ops.
    if uniformity_weight > 0:
        scored = probs.masked_fill(correct, -accuracy_weight / uniformity_weight)
        eps = adv_eps / uniformity_weight
    else:
        scored, eps = correct.to(logits.dtype).mul_(-accuracy_weight), adv_eps
    std, mean = torch.std_mean(scored, dim=-1, keepdim=True, correction=0)
    low, high = scored.aminmax(dim=-1, keepdim=True)
    # A group whose rewards are all equal carries no signal: its advantages must be exactly 0,
    # but the mean of equal floats is not always exactly that float. Clamped into [low, high] it
    # is (low == high), so r - mean is exactly 0 there; elsewhere the clamp changes nothing.
    negated = torch.sub(scored, mean.clamp_(low, high)).div_(std.add_(eps))
    # min(A, 0) (i.e. max(-A, 0)) for the wrong outputs: with lam <= a they are <= 0 already up
    # to rounding, which this removes; with lam > a (docs/method.md) a wrong output's
    # -lam * pi_old can lie above the group mean and this cap keeps it from being pushed up.
    negated = torch.where(correct, negated, negated.clamp_min(0.0))
    loss = negated.mean()
    rewards = None
    if with_stats:
        rewards = (
            probs.mul(-uniformity_weight).masked_fill_(correct, accuracy_weight)
            if uniformity_weight > 0
            else correct.to(logits.dtype) * accuracy_weight
        )
    if uniformity_weight > accuracy_weight:
        # The capped advantages no longer sum to zero: grad_j = (pi_j sum_i A_i - A_j) / (B G).
        weights = torch.addcmul(negated, probs, negated.sum(dim=-1, keepdim=True), value=-1.0)
        return loss, weights, scale / temperature, log_probs, rewards
    # With lam <= a, sum_i A_i = 0 in every row (centred rewards times a per-row constant; the
    # clamp above only removes rounding), so the pi term is dropped: grad_j = -A_j / (B G).
    return loss, negated, scale / temperature, log_probs, rewards


_COMPILED: dict[str, Any] = {}


def _compiled_math() -> Any:
    if "math" not in _COMPILED:
        _COMPILED["math"] = torch.compile(_accuracy_uniformity_math, dynamic=False)
    return _COMPILED["math"]


class _FusedAccuracyUniformity(torch.autograd.Function):
    """The default labeled objective in a few passes: one inner step (rho = 1), beta = 0, and
    rewards ``a * [correct] - lam * pi_old * [wrong]`` where pi_old is the current policy.

    The input is the similarities and the temperature: the backward returns the gradient on the
    similarities directly (one multiply by a scalar folded into ``k``), so autograd records no
    separate division node."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        similarities: Tensor,
        correct: Tensor,
        accuracy_weight: float,
        uniformity_weight: float,
        adv_eps: float,
        temperature: float,
        with_stats: bool,
        compile_math: bool,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        math = _compiled_math() if compile_math else _accuracy_uniformity_math
        loss, weights, factor, log_probs, rewards = math(
            similarities,
            correct,
            accuracy_weight,
            uniformity_weight,
            adv_eps,
            temperature,
            with_stats,
        )
        ctx.save_for_backward(weights)
        ctx.factor = factor  # type: ignore[attr-defined]
        ctx.mark_non_differentiable(*(t for t in (log_probs, rewards) if t is not None))
        return loss, log_probs, rewards

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor, *_unused: Tensor) -> tuple[Tensor | None, ...]:
        (weights,) = ctx.saved_tensors
        # The scalar product first: one small op, then one pass over the (B, G) weights.
        grad = weights * (grad_loss * ctx.factor)
        return grad, None, None, None, None, None, None, None


def fused_loss_on_similarities(
    similarities: Tensor,
    correct: Tensor,
    temperature: float,
    accuracy_weight: float = 1.0,
    uniformity_weight: float = DEFAULT_UNIFORMITY_WEIGHT,
    adv_eps: float = 1e-6,
    with_stats: bool = False,
    compile_math: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """:func:`fused_accuracy_uniformity_loss` of ``similarities / temperature``, unchecked.

    For callers that validated their inputs (shapes, finite values) already; the gradient flows to
    ``similarities`` without a separate division node.

    Args:
        similarities: Cosine similarities (B, G) (the logits times the temperature).
        correct: Boolean mask (B, G) of the correct outputs.
        temperature: tau > 0; the policy is ``softmax(similarities / temperature)``.
        accuracy_weight: Reward of a correct output (> 0).
        uniformity_weight: lambda of the -lambda * pi_old penalty on wrong outputs (0 disables it).
        adv_eps: Added to the group standard deviation (> 0).
        with_stats: Also return the log-probabilities and the rewards (two to four more passes);
            False returns None in their place.
        compile_math: Run the math through ``torch.compile``.

    Returns:
        (loss, log_probs or None, rewards or None); the last two detached.

    Examples:
        >>> sims = torch.rand(4, 10, requires_grad=True) * 2 - 1
        >>> correct = torch.nn.functional.one_hot(torch.tensor([1, 2, 3, 4]), 10).bool()
        >>> loss, log_probs, _ = fused_loss_on_similarities(sims, correct, temperature=0.1)
        >>> loss.backward(); log_probs is None
        True
    """
    return _FusedAccuracyUniformity.apply(
        similarities,
        correct,
        float(accuracy_weight),
        float(uniformity_weight),
        float(adv_eps),
        float(temperature),
        with_stats,
        compile_math,
    )


def fused_accuracy_uniformity_loss(
    logits: Tensor,
    correct: Tensor,
    accuracy_weight: float = 1.0,
    uniformity_weight: float = DEFAULT_UNIFORMITY_WEIGHT,
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
    if correct.dtype != torch.bool:
        raise ValueError(f"correct must be a bool mask, got dtype {correct.dtype}")
    if logits.numel() == 0:
        raise ValueError(f"empty batch or group: logits have shape {tuple(logits.shape)}")
    if validate:
        check_finite({"logits": logits})
    loss, log_probs, rewards = _FusedAccuracyUniformity.apply(
        logits,
        correct,
        float(accuracy_weight),
        float(uniformity_weight),
        float(adv_eps),
        1.0,
        True,
        compile_math,
    )
    assert log_probs is not None and rewards is not None
    return loss, log_probs, rewards
