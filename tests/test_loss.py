from __future__ import annotations

import math

import pytest
import torch

from lightly_grpo.losses.grpo import GRPORMLoss, degenerate_groups, group_advantages


def _hand_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    rows = []
    for row in rewards.tolist():
        mean = sum(row) / len(row)
        std = (sum((r - mean) ** 2 for r in row) / len(row)) ** 0.5
        rows.append([0.0 if max(row) == min(row) else (r - mean) / (std + eps) for r in row])
    return torch.tensor(rows, dtype=rewards.dtype)


def test_advantages_match_hand_computation() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, -0.5], [0.3, 0.3, 0.3, 0.3], [2.0, -1.0, 0.5, 0.0]])
    advantages = group_advantages(rewards)
    assert torch.allclose(advantages, _hand_advantages(rewards), atol=1e-6)
    assert torch.allclose(advantages.sum(dim=1), torch.zeros(3), atol=1e-5)
    assert degenerate_groups(rewards).tolist() == [False, True, False]


def test_loss_value_against_hand_computation_with_old_logits_and_kl() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.3]], dtype=torch.float64)
    old = torch.tensor([[1.5, 0.5, -0.5], [0.2, 0.4, 0.3]], dtype=torch.float64)
    ref = torch.tensor([[0.0, 0.0, 0.0], [1.0, -1.0, 0.0]], dtype=torch.float64)
    rewards = torch.tensor([[1.0, 0.0, -0.2], [0.0, 1.0, 0.0]], dtype=torch.float64)
    eps, beta = 0.2, 0.1
    loss = GRPORMLoss(clip_eps=eps, beta=beta)(logits, rewards, old, ref)

    expected = 0.0
    for b in range(2):
        pi = torch.softmax(logits[b], 0).tolist()
        pi_old = torch.softmax(old[b], 0).tolist()
        pi_ref = torch.softmax(ref[b], 0).tolist()
        adv = _hand_advantages(rewards[b : b + 1])[0].tolist()
        surrogate = 0.0
        for i in range(3):
            rho = pi[i] / pi_old[i]
            clipped = min(max(rho, 1 - eps), 1 + eps)
            surrogate += min(rho * adv[i], clipped * adv[i])
        kl = sum(p * math.log(p / q) for p, q in zip(pi, pi_ref, strict=True))
        expected += -surrogate / 3 + beta * kl
    expected /= 2
    assert loss.item() == pytest.approx(expected, abs=1e-10)


def test_gradient_with_whole_group_and_rho_one_is_minus_advantage_over_bg() -> None:
    torch.manual_seed(0)
    batch, group = 5, 7
    logits = torch.randn(batch, group, requires_grad=True)
    rewards = torch.randn(batch, group)
    GRPORMLoss()(logits, rewards).backward()
    expected = -group_advantages(rewards) / (batch * group)
    assert logits.grad is not None
    assert torch.allclose(logits.grad, expected, atol=1e-7)


def test_gradcheck_float64_with_clipping_and_kl() -> None:
    torch.manual_seed(1)
    logits = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    rewards = torch.randn(4, 6, dtype=torch.float64)
    old = logits.detach() + 0.5 * torch.randn(4, 6, dtype=torch.float64)
    ref = torch.randn(4, 6, dtype=torch.float64)
    criterion = GRPORMLoss(clip_eps=0.2, beta=0.3)
    assert torch.autograd.gradcheck(lambda x: criterion(x, rewards, old, ref), (logits,))
    # With old_logits=None the old policy is the current one without gradient: its derivative is
    # the one at a fixed old policy equal to the current point.
    at_point = logits.detach().clone()
    assert torch.autograd.gradcheck(lambda x: GRPORMLoss()(x, rewards, at_point), (logits,))
    (grad_none,) = torch.autograd.grad(GRPORMLoss()(logits, rewards), logits)
    (grad_fixed,) = torch.autograd.grad(GRPORMLoss()(logits, rewards, at_point), logits)
    assert torch.allclose(grad_none, grad_fixed, atol=1e-12)


def _autograd_reference(logits, rewards, old, eps):  # type: ignore[no-untyped-def]
    """The same surrogate written with plain autograd ops (independent of the custom Function)."""
    adv = group_advantages(rewards)
    ratio = torch.exp(torch.log_softmax(logits, -1) - torch.log_softmax(old, -1))
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
    # dual clip: a negative advantage's objective is bounded below by 3 * A
    surrogate = torch.where(adv < 0, torch.maximum(surrogate, 3.0 * adv), surrogate)
    return -surrogate.mean()


def test_gradient_matches_plain_autograd_formulation() -> None:
    torch.manual_seed(2)
    logits = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    rewards = torch.randn(6, 5, dtype=torch.float64)
    old = logits.detach() + torch.randn(6, 5, dtype=torch.float64)
    (ours,) = torch.autograd.grad(GRPORMLoss(clip_eps=0.2)(logits, rewards, old), logits)
    (ref,) = torch.autograd.grad(_autograd_reference(logits, rewards, old, 0.2), logits)
    assert torch.allclose(ours, ref, atol=1e-12)


def test_clipping_takes_effect_with_inner_steps() -> None:
    """After the first inner step ratios move away from 1; clipped pairs stop contributing."""
    torch.manual_seed(3)
    old = torch.randn(8, 10)
    rewards = torch.nn.functional.one_hot(torch.randint(0, 10, (8,)), 10).float()
    moved = (old + 2.0 * torch.randn(8, 10)).requires_grad_(True)
    criterion = GRPORMLoss(clip_eps=0.2)
    loss, stats = criterion.forward_with_stats(moved, rewards, old)
    assert stats.clip_fraction.item() > 0.2
    loss.backward()
    unclipped = GRPORMLoss(clip_eps=1e6)
    moved2 = moved.detach().clone().requires_grad_(True)
    unclipped(moved2, rewards, old).backward()
    assert moved.grad is not None and moved2.grad is not None
    assert not torch.allclose(moved.grad, moved2.grad)
    # with old == current (first inner step) nothing is clipped
    _, first = criterion.forward_with_stats(old.clone().requires_grad_(True), rewards, old)
    assert first.clip_fraction.item() == 0.0


def test_positive_beta_gives_exact_kl() -> None:
    torch.manual_seed(4)
    logits, ref = torch.randn(3, 4), torch.randn(3, 4)
    rewards = torch.zeros(3, 4)  # degenerate: only the KL term is left
    loss, stats = GRPORMLoss(beta=0.5).forward_with_stats(logits, rewards, ref_logits=ref)
    pi, pi_ref = torch.softmax(logits, -1), torch.softmax(ref, -1)
    kl = (pi * (pi.log() - pi_ref.log())).sum(-1).mean()
    assert stats.kl.item() == pytest.approx(kl.item(), rel=1e-5)
    assert loss.item() == pytest.approx(0.5 * kl.item(), rel=1e-5)
    same, _ = GRPORMLoss(beta=0.5).forward_with_stats(logits, rewards, ref_logits=logits)
    assert same.item() == pytest.approx(0.0, abs=1e-7)


def test_all_equal_rewards_give_zero_gradient_and_no_nan() -> None:
    logits = torch.randn(4, 5, requires_grad=True)
    loss, stats = GRPORMLoss().forward_with_stats(logits, torch.full((4, 5), 0.7))
    loss.backward()
    assert torch.isfinite(loss)
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros(4, 5))
    assert stats.degenerate_fraction.item() == 1.0


@pytest.mark.parametrize(
    ("logits", "rewards", "match"),
    [
        (torch.randn(4, 5), torch.randn(4, 6), r"rewards must have the shape of logits \(4, 5\)"),
        (torch.randn(4, 5, 2), torch.randn(4, 5, 2), r"got \(4, 5, 2\)"),
        (torch.randn(0, 5), torch.randn(0, 5), r"empty batch"),
        (
            torch.tensor([[1.0, float("nan")]]),
            torch.zeros(1, 2),
            r"logits contains NaN or inf: 1 val",
        ),
        (
            torch.tensor([[1.0, float("inf")]]),
            torch.zeros(1, 2),
            r"logits contains NaN or inf: 1 val",
        ),
        (torch.zeros(1, 2), torch.tensor([[float("nan"), 0.0]]), r"rewards contains NaN or inf: 1"),
    ],
)
def test_bad_input_raises(logits: torch.Tensor, rewards: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GRPORMLoss()(logits, rewards)


def test_bad_hyperparameters_raise() -> None:
    with pytest.raises(ValueError, match="clip_eps must be >= 0, got -0.1"):
        GRPORMLoss(clip_eps=-0.1)
    with pytest.raises(ValueError, match="beta must be a finite number >= 0, got -1"):
        GRPORMLoss(beta=-1)
    with pytest.raises(ValueError, match="beta=0.1 > 0 needs ref_logits"):
        GRPORMLoss(beta=0.1)(torch.randn(2, 3), torch.randn(2, 3))
