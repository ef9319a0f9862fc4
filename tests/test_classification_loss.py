from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightly_grpo.losses.classification import GRPORMClassificationLoss
from lightly_grpo.output_sets.base import sample_group
from lightly_grpo.rewards import AccuracyReward


def test_call_like_a_proxy_loss_and_gradients_reach_embeddings_and_prototypes() -> None:
    torch.manual_seed(0)
    criterion = GRPORMClassificationLoss(num_classes=5, embedding_size=8)
    embeddings = torch.randn(16, 8, requires_grad=True)
    labels = torch.randint(0, 5, (16,))
    loss = criterion(embeddings, labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0
    assert criterion.prototypes.weight.grad is not None


def test_logit_gradient_is_minus_advantage_over_bg_for_accuracy_reward() -> None:
    torch.manual_seed(1)
    criterion = GRPORMClassificationLoss(4, 6, temperature=0.5, reward=AccuracyReward())
    embeddings = torch.randn(3, 6)
    labels = torch.tensor([0, 2, 3])
    logits = criterion.logits(embeddings).detach().requires_grad_(True)
    rewards = F.one_hot(labels, 4).float()
    loss = criterion.grpo(logits, rewards)
    loss.backward()
    adv = (rewards - rewards.mean(1, keepdim=True)) / (
        rewards.std(1, keepdim=True, correction=0) + 1e-6
    )
    assert logits.grad is not None
    assert torch.allclose(logits.grad, -adv / 12, atol=1e-6)


def test_training_on_separable_embeddings_raises_policy_accuracy() -> None:
    torch.manual_seed(2)
    centers = F.normalize(torch.randn(6, 16), dim=1)
    labels = torch.randint(0, 6, (600,))
    features = centers[labels] + 0.3 * torch.randn(600, 16)  # cross-entropy reaches 0.93 here
    encoder = torch.nn.Linear(16, 16)
    criterion = GRPORMClassificationLoss(6, 16)
    optimizer = torch.optim.Adam(list(encoder.parameters()) + list(criterion.parameters()), lr=1e-2)
    before = (criterion.prototypes.predict(encoder(features)) == labels).float().mean()
    for _ in range(150):
        loss = criterion(encoder(features), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = (criterion.prototypes.predict(encoder(features)) == labels).float().mean()
    assert after > 0.85 and after > before + 0.3


def test_prototypes_initialised_from_class_means() -> None:
    criterion = GRPORMClassificationLoss(3, 2)
    embeddings = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])
    criterion.init_prototypes(embeddings, torch.tensor([0, 0, 1, 2]))
    keys = criterion.prototypes.keys()
    assert torch.allclose(keys[0], torch.tensor([1.0, 0.0]))
    assert torch.allclose(keys[1], torch.tensor([0.0, 1.0]))
    assert torch.allclose(keys[2], F.normalize(torch.tensor([-1.0, -1.0]), dim=0))
    with pytest.warns(UserWarning, match=r"classes \[2\] have no embeddings"):
        criterion.init_prototypes(embeddings[:3], torch.tensor([0, 0, 1]))


def test_sampled_group_keeps_the_true_class() -> None:
    torch.manual_seed(3)
    old = torch.randn(50, 20)
    correct = F.one_hot(torch.randint(0, 20, (50,)), 20).bool()
    index = sample_group(old, correct, 5)
    assert index.shape == (50, 5)
    assert correct.gather(1, index).sum(1).eq(1).all()
    assert all(len(set(row)) == 5 for row in index.tolist())
    criterion = GRPORMClassificationLoss(20, 8, group_size=5)
    loss = criterion(torch.randn(50, 8, requires_grad=True), correct.float().argmax(1))
    assert torch.isfinite(loss)


def test_bad_input_raises_with_the_value() -> None:
    criterion = GRPORMClassificationLoss(num_classes=4, embedding_size=3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\), got \[4\]"):
        criterion(torch.randn(2, 3), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"got \[-1\]"):
        criterion(torch.randn(2, 3), torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="embeddings contains NaN or inf: 1 value"):
        criterion(torch.tensor([[0.0, float("nan"), 1.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="empty batch"):
        criterion(torch.randn(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="dimension 5, expected 3"):
        criterion(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="got 3 labels for a batch of 2"):
        criterion(torch.randn(2, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        GRPORMClassificationLoss(4, 3, temperature=0)
    with pytest.raises(ValueError, match="temperature must be > 0, got -0.1"):
        GRPORMClassificationLoss(4, 3, temperature=-0.1)
    with pytest.raises(ValueError, match="clip_eps must be >= 0, got -0.2"):
        GRPORMClassificationLoss(4, 3, clip_eps=-0.2)


@pytest.mark.parametrize("uniformity", [0.0, 1.0, 0.5, 2.0])
def test_fused_default_path_equals_general_loss(uniformity: float) -> None:
    from lightly_grpo.losses.fused import fused_accuracy_uniformity_loss
    from lightly_grpo.losses.grpo import GRPORMLoss
    from lightly_grpo.rewards import RewardInputs, build_reward

    torch.manual_seed(5)
    logits = torch.randn(9, 7, dtype=torch.float64, requires_grad=True)
    correct = F.one_hot(torch.randint(0, 7, (9,)), 7).bool()
    correct[0] = True  # a degenerate group: all outputs correct
    reward = build_reward(1.0, uniformity)
    rewards = reward(RewardInputs(correct, logits.detach(), logits.detach()))
    (general,) = torch.autograd.grad(GRPORMLoss()(logits, rewards, correct=correct), logits)
    loss, _, fused_rewards = fused_accuracy_uniformity_loss(logits, correct, 1.0, uniformity)
    (fused,) = torch.autograd.grad(loss, logits)
    assert torch.allclose(fused_rewards, rewards)
    assert torch.allclose(fused, general, atol=1e-12)
    assert torch.equal(fused[0], torch.zeros(7, dtype=torch.float64))


def test_nan_prototypes_and_validation_switch() -> None:
    criterion = GRPORMClassificationLoss(num_classes=3, embedding_size=2)
    with torch.no_grad():
        criterion.prototypes.weight[1, 0] = float("nan")
    with pytest.raises(ValueError, match="prototypes contain NaN"):
        criterion(torch.randn(2, 2), torch.tensor([0, 1]))
    unchecked = GRPORMClassificationLoss(num_classes=3, embedding_size=2, validate=False)
    # without validation, out-of-range labels are not looked for (no host sync) ...
    assert unchecked.validate is False
    # ... but shape errors are still caught on the host
    with pytest.raises(ValueError, match="dimension 4, expected 2"):
        unchecked(torch.randn(2, 4), torch.tensor([0, 1]))


def test_compiled_fused_path_matches_eager() -> None:
    from lightly_grpo.losses.fused import fused_accuracy_uniformity_loss

    torch.manual_seed(6)
    logits = torch.randn(8, 5, requires_grad=True)
    correct = F.one_hot(torch.randint(0, 5, (8,)), 5).bool()
    eager_loss, _, eager_rewards = fused_accuracy_uniformity_loss(logits, correct)
    (eager,) = torch.autograd.grad(eager_loss, logits)
    loss, _, rewards = fused_accuracy_uniformity_loss(logits, correct, compile_math=True)
    (compiled,) = torch.autograd.grad(loss, logits)
    assert torch.allclose(rewards, eager_rewards, atol=1e-6)
    assert torch.allclose(compiled, eager, atol=1e-7)


@pytest.mark.parametrize("uniformity", [0.0, 1.0, 2.0])
def test_fused_loss_on_similarities_equals_the_loss_on_logits(uniformity: float) -> None:
    from lightly_grpo.losses.fused import fused_accuracy_uniformity_loss, fused_loss_on_similarities

    torch.manual_seed(7)
    sims = (torch.rand(6, 9, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    correct = F.one_hot(torch.randint(0, 9, (6,)), 9).bool()
    correct[2] = True  # a degenerate group
    loss, log_probs, rewards = fused_loss_on_similarities(
        sims, correct, 0.2, 1.0, uniformity, with_stats=True
    )
    (grad,) = torch.autograd.grad(loss, sims)
    ref_loss, ref_log_probs, ref_rewards = fused_accuracy_uniformity_loss(
        sims / 0.2, correct, 1.0, uniformity
    )
    (ref_grad,) = torch.autograd.grad(ref_loss, sims)
    assert log_probs is not None and rewards is not None
    assert torch.allclose(loss, ref_loss, atol=1e-15)
    assert torch.allclose(grad, ref_grad, atol=1e-14)
    assert torch.allclose(log_probs, ref_log_probs) and torch.equal(rewards, ref_rewards)
    assert torch.equal(grad[2], torch.zeros(9, dtype=torch.float64))
    # without statistics nothing but the loss is computed
    _, no_log_probs, no_rewards = fused_loss_on_similarities(sims, correct, 0.2)
    assert no_log_probs is None and no_rewards is None


def test_default_path_statistics_equal_the_general_path() -> None:
    from lightly_grpo.losses.grpo import GRPORMLoss
    from lightly_grpo.rewards import RewardInputs

    torch.manual_seed(8)
    criterion = GRPORMClassificationLoss(num_classes=6, embedding_size=5).double()
    embeddings, labels = torch.randn(10, 5, dtype=torch.float64), torch.randint(0, 6, (10,))
    loss, stats = criterion.forward_with_stats(embeddings, labels)
    logits = criterion.logits(embeddings)
    correct = F.one_hot(labels, 6).bool()
    rewards = criterion.reward(RewardInputs(correct, logits.detach(), logits.detach() * 0.1))
    expected_loss, expected = GRPORMLoss().forward_with_stats(logits, rewards, correct=correct)
    assert float(loss) == pytest.approx(float(expected_loss), abs=1e-12)
    for name, value in expected.as_dict().items():
        assert float(stats[name]) == pytest.approx(float(value), abs=1e-12), name
    accuracy = (logits.argmax(1) == labels).double().mean()
    assert float(stats["accuracy"]) == pytest.approx(float(accuracy))
