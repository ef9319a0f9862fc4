"""On-policy group estimators (docs/method.md §7.1): weights, advantages, gradients, options."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lightly_grpo.losses import GRPORMClassificationLoss, GRPORMNeighborLoss, GRPORMPolicyLoss
from lightly_grpo.losses.grpo import (
    GRPORMLoss,
    estimator_weights,
    group_advantages,
    sample_draws,
    weighted_advantages,
)
from lightly_grpo.output_sets import ClassPrototypes, NeighborOutputSet
from lightly_grpo.rewards import AccuracyReward, build_reward, neighbor_reward
from lightly_grpo.stage import GRPORMStage


def _reference(logits, rewards, old, weights, eps, normalize=True):  # type: ignore[no-untyped-def]
    """The weighted surrogate with plain autograd ops and a hand-written weighted advantage."""
    mean = (weights * rewards).sum(-1, keepdim=True)
    centred = rewards - mean
    std = (weights * centred**2).sum(-1, keepdim=True).sqrt()
    adv = centred / (std + 1e-6) if normalize else centred
    support = weights > 0
    adv = torch.where(support, adv, torch.zeros_like(adv))
    ratio = torch.exp(torch.log_softmax(logits, -1) - torch.log_softmax(old, -1))
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
    surrogate = torch.where(adv < 0, torch.maximum(surrogate, 3.0 * adv), surrogate)
    return -(weights * surrogate).sum(-1).mean()


@pytest.mark.parametrize("normalize", [True, False])
def test_weighted_loss_and_gradient_match_plain_autograd(normalize: bool) -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    rewards = torch.randn(6, 5, dtype=torch.float64)
    old = logits.detach() + torch.randn(6, 5, dtype=torch.float64)
    weights = torch.rand(6, 5, dtype=torch.float64)
    weights[0, :2] = 0.0  # outputs outside the support
    weights = weights / weights.sum(-1, keepdim=True)
    criterion = GRPORMLoss(clip_eps=0.2, normalize_std=normalize)
    ours = criterion(logits, rewards, old, weights=weights)
    ref = _reference(logits, rewards, old, weights, 0.2, normalize)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-12)
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    assert torch.allclose(g_ours, g_ref, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda x: criterion(x, rewards, old, weights=weights), (logits,)
    )


def test_uniform_weights_equal_the_unweighted_loss() -> None:
    torch.manual_seed(1)
    logits = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    rewards, old = torch.randn(4, 7, dtype=torch.float64), torch.randn(4, 7, dtype=torch.float64)
    uniform = torch.full((4, 7), 1 / 7, dtype=torch.float64)
    for old_logits in (None, old):
        a = GRPORMLoss()(logits, rewards, old_logits)
        b = GRPORMLoss()(logits, rewards, old_logits, weights=uniform)
        assert a.item() == pytest.approx(b.item(), abs=1e-12)
        (ga,) = torch.autograd.grad(a, logits)
        (gb,) = torch.autograd.grad(b, logits)
        assert torch.allclose(ga, gb, atol=1e-12)
    assert torch.allclose(
        weighted_advantages(rewards, uniform), group_advantages(rewards), atol=1e-12
    )


@pytest.mark.parametrize("normalize", [True, False])
def test_expected_estimator_gradient_is_the_variance_normalised_accuracy_gradient(
    normalize: bool,
) -> None:
    """One step, accuracy reward only: dloss/dl_j = -(1/B) dpi_y/dl_j / sqrt(pi_y (1 - pi_y)),
    and without the std normalisation (Dr. GRPO) -(1/B) dpi_y/dl_j."""
    torch.manual_seed(2)
    batch, classes = 5, 6
    logits = torch.randn(batch, classes, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, classes, (batch,))
    rewards = F.one_hot(labels, classes).double()
    weights = estimator_weights("expected", logits.detach())
    loss = GRPORMLoss(normalize_std=normalize, adv_eps=1e-12)(logits, rewards, weights=weights)
    (grad,) = torch.autograd.grad(loss, logits)
    pi = torch.softmax(logits.detach(), -1)
    pi_y = pi.gather(1, labels[:, None])
    dpi_y = pi_y * (F.one_hot(labels, classes).double() - pi)  # d pi_y / d l_j
    scale = torch.sqrt(pi_y * (1 - pi_y)) if normalize else torch.ones_like(pi_y)
    assert torch.allclose(grad, -dpi_y / scale / batch, atol=1e-10)


def test_solved_images_get_a_smaller_push_on_policy_than_uniformly() -> None:
    logits = torch.tensor([[6.0, 0.0, 0.0, 0.0], [0.2, 0.0, 0.0, 0.0]], requires_grad=True)
    rewards = F.one_hot(torch.tensor([0, 0]), 4).float()  # row 0 solved, row 1 not
    (uniform,) = torch.autograd.grad(GRPORMLoss()(logits, rewards), logits)
    weights = estimator_weights("expected", logits.detach())
    (expected,) = torch.autograd.grad(GRPORMLoss()(logits, rewards, weights=weights), logits)
    # Uniform pushes both rows equally; on-policy the solved row gets far less.
    assert uniform[0, 0] == pytest.approx(uniform[1, 0].item(), rel=1e-5)
    assert abs(expected[0, 0]) < 0.2 * abs(expected[1, 0])


def test_sampled_groups_all_correct_or_all_wrong_carry_no_signal() -> None:
    logits = torch.zeros(3, 4, requires_grad=True)
    rewards = F.one_hot(torch.tensor([0, 0, 0]), 4).float()
    draws = torch.tensor([[0, 0, 0], [1, 2, 1], [0, 3, 1]])  # all correct, all wrong, mixed
    weights = estimator_weights("sampled", logits.detach(), draws)
    assert weights.tolist()[0] == [1.0, 0.0, 0.0, 0.0]
    loss, stats = GRPORMLoss().forward_with_stats(logits, rewards, weights=weights)
    loss.backward()
    assert logits.grad is not None
    assert torch.equal(logits.grad[:2], torch.zeros(2, 4))
    assert logits.grad[2].abs().sum() > 0
    assert stats.degenerate_fraction.item() == pytest.approx(2 / 3)


def test_many_draws_approach_the_expected_estimator() -> None:
    torch.manual_seed(3)
    logits = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    rewards = F.one_hot(torch.tensor([0, 1, 2, 3]), 5).double()
    expected = estimator_weights("expected", logits.detach())
    (g_exp,) = torch.autograd.grad(GRPORMLoss()(logits, rewards, weights=expected), logits)
    draws = sample_draws(logits.detach(), 200_000)
    sampled = estimator_weights("sampled", logits.detach(), draws)
    (g_smp,) = torch.autograd.grad(GRPORMLoss()(logits, rewards, weights=sampled), logits)
    assert torch.allclose(g_smp, g_exp, atol=5e-3)


def test_policy_loss_estimators_train_with_uniformity_and_round_trip() -> None:
    torch.manual_seed(4)
    labels = torch.randint(0, 6, (16,))
    for estimator, group in (("expected", None), ("sampled", 8), ("uniform", None)):
        for normalize in (True, False):
            criterion = GRPORMClassificationLoss(
                6, 8, estimator=estimator, group_size=group, normalize_std=normalize
            )
            embeddings = torch.randn(16, 8, requires_grad=True)
            loss, stats = criterion.forward_with_stats(embeddings, labels)
            loss.backward()
            assert embeddings.grad is not None and torch.isfinite(embeddings.grad).all()
            assert 0.0 <= stats["degenerate_fraction"].item() <= 1.0
            rebuilt = GRPORMClassificationLoss(**criterion.config())
            assert rebuilt.estimator == estimator and rebuilt.grpo.normalize_std is normalize
    # The default reward (accuracy + uniformity) with the expected estimator takes the general
    # path and gives the same loss as the low-level loss with the same rewards and weights.
    criterion = GRPORMClassificationLoss(6, 8, estimator="expected")
    embeddings = torch.randn(16, 8, dtype=torch.float64)
    criterion = criterion.double()
    logits = criterion.logits(embeddings)
    weights = estimator_weights("expected", logits)
    from lightly_grpo.rewards import RewardInputs

    correct = F.one_hot(labels, 6).bool()
    rewards = criterion.reward(
        RewardInputs(correct=correct, old_logits=logits, similarities=logits * 0.1)
    )
    low = GRPORMLoss()(logits, rewards, correct=correct, weights=weights)
    assert criterion(embeddings, labels).item() == pytest.approx(low.item(), abs=1e-10)


def test_sampled_draws_are_reused_across_inner_steps(tmp_path: Path) -> None:
    torch.manual_seed(5)
    criterion = GRPORMClassificationLoss(4, 8, estimator="sampled", group_size=6)
    old = torch.randn(10, 4)
    draws = criterion.sample_group_index(old, F.one_hot(torch.randint(0, 4, (10,)), 4).bool())
    assert draws is not None and draws.shape == (10, 6) and int(draws.max()) < 4
    embeddings = torch.randn(10, 8, requires_grad=True)
    labels = torch.randint(0, 4, (10,))
    first = criterion(embeddings, labels, old_logits=old, group_index=draws)
    second = criterion(embeddings, labels, old_logits=old, group_index=draws)
    assert first.item() == second.item()  # the same draws give the same loss
    # A real stage with several inner steps and the sampled estimator trains.
    from tests.test_stage import digit_loader, small_cnn, trainer

    stage = GRPORMStage(
        small_cnn(),
        GRPORMClassificationLoss(10, 32, estimator="sampled", group_size=8),
        inner_steps=2,
    )
    before = [p.detach().clone() for p in stage.backbone.parameters()]
    trainer(tmp_path, max_steps=2).fit(stage, digit_loader(64, 32))
    after = list(stage.backbone.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_neighbour_sets_take_every_estimator() -> None:
    torch.manual_seed(6)
    for estimator, draws in (("expected", None), ("sampled", 6)):
        criterion = GRPORMNeighborLoss(memory_bank_size=64, estimator=estimator, num_draws=draws)
        out0, out1 = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16)
        criterion(out0, out1).backward()
        assert out0.grad is not None and torch.isfinite(out0.grad).all()
        output_set = NeighborOutputSet(20, 16, num_neighbors=3)
        output_set.initialize(F.normalize(torch.randn(20, 16), dim=1))
        policy = GRPORMPolicyLoss(
            output_set, reward=neighbor_reward(), estimator=estimator, group_size=draws
        )
        views = torch.randn(8, 16, requires_grad=True)
        loss = policy(views, items=torch.arange(4))
        loss.backward()
        assert views.grad is not None and torch.isfinite(views.grad).all()


def test_bad_estimator_options_name_the_value() -> None:
    prototypes = ClassPrototypes(5, 8)
    with pytest.raises(ValueError, match=r"estimator must be one of .* got 'ppo'"):
        GRPORMPolicyLoss(prototypes, estimator="ppo")
    with pytest.raises(ValueError, match="needs group_size = the number of draws.*got None"):
        GRPORMPolicyLoss(prototypes, estimator="sampled")
    with pytest.raises(ValueError, match="integer >= 2.*got 1"):
        GRPORMPolicyLoss(prototypes, estimator="sampled", group_size=1)
    with pytest.raises(ValueError, match="group_size must be None, got 3"):
        GRPORMPolicyLoss(prototypes, estimator="expected", group_size=3)
    with pytest.raises(ValueError, match="normalize_std must be True or False"):
        GRPORMLoss(normalize_std="no")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_draws .* needed by estimator='sampled'"):
        GRPORMNeighborLoss(estimator="sampled")
    logits, rewards = torch.zeros(2, 3), torch.eye(3)[:2]
    with pytest.raises(ValueError, match="weights must be finite, >= 0 and sum to 1"):
        GRPORMLoss()(logits, rewards, weights=torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="weights must have the shape of logits"):
        GRPORMLoss()(logits, rewards, weights=torch.ones(2, 2) / 2)
    with pytest.raises(ValueError, match="needs the draws"):
        estimator_weights("sampled", logits)
    assert math.isfinite(GRPORMLoss()(logits, rewards, weights=torch.eye(3)[:2]).item())
    assert AccuracyReward(1.0) + build_reward(0.5, 0.0) is not None  # rewards compose as before
