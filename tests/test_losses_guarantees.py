"""The loss-level defects of the review, each with a test that failed before its fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightly_grpo import GRPORMClassificationLoss, GRPORMLoss
from lightly_grpo.losses import GRPORMPolicyLoss, group_advantages
from lightly_grpo.output_sets import ClassPrototypes
from lightly_grpo.rewards import AccuracyReward, RewardInputs, UniformityReward


def test_beta_without_reference_logits_raises_instead_of_dropping_the_kl() -> None:
    criterion = GRPORMClassificationLoss(num_classes=4, embedding_size=3, beta=0.5)
    embeddings, labels = torch.randn(6, 3), torch.randint(0, 4, (6,))
    with pytest.raises(ValueError, match=r"beta=0.5 > 0 needs ref_logits"):
        criterion(embeddings, labels)
    # With reference logits the KL is in the loss: equal to the low-level loss with the KL.
    ref_logits = torch.randn(6, 4)
    loss = criterion(embeddings, labels, ref_logits=ref_logits)
    logits = criterion.logits(embeddings)
    rewards = criterion.reward.compute(
        RewardInputs(
            F.one_hot(labels, 4).bool(), logits.detach(), logits.detach() * criterion.temperature
        )
    )
    expected = GRPORMLoss(beta=0.5)(
        logits, rewards, ref_logits=ref_logits, correct=F.one_hot(labels, 4).bool()
    )
    assert torch.allclose(loss, expected, atol=1e-6)
    log_p, log_ref = logits.detach().log_softmax(1), ref_logits.log_softmax(1)
    kl = float((log_p.exp() * (log_p - log_ref)).sum(1).mean())
    # one inner step, default reward (advantages sum to 0): the loss is the KL term alone
    assert kl > 1e-3 and float(loss) == pytest.approx(0.5 * kl, rel=1e-5, abs=1e-6)


def _wrong_advantages(rewards: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    return group_advantages(rewards, correct=correct)[~correct]


def test_no_wrong_output_gets_a_positive_advantage_property() -> None:
    """Random rewards of every shipped form and weight: wrong outputs' advantages are <= 0."""
    generator = torch.Generator().manual_seed(0)
    for trial in range(300):
        batch, group = 1 + trial % 7, 2 + trial % 13
        correct = torch.rand(batch, group, generator=generator) < 0.3
        sims = torch.rand(batch, group, generator=generator) * 2 - 1
        old_logits = torch.randn(batch, group, generator=generator) * 10
        lam = float(torch.rand((), generator=generator) * 10)
        form = ("policy", "similarity")[trial % 2]
        inputs = RewardInputs(correct, old_logits, sims)
        reward = AccuracyReward(float(torch.rand((), generator=generator)) + 0.1) + (
            UniformityReward(lam, form=form, clamp=trial % 3 != 0)
        )
        rewards = reward(inputs)
        assert (_wrong_advantages(rewards, correct) <= 0).all(), (trial, form, lam)
        raw = torch.randn(batch, group, generator=generator) * 100  # arbitrary rewards too
        assert (_wrong_advantages(raw, correct) <= 0).all()


def test_the_reviews_similarity_example_gives_no_positive_push_through_the_loss() -> None:
    # cosines [0.6 correct, 0.4 x5, -0.1 x4], clamped similarity form, lambda = 1: uncapped, the
    # four negative-cosine wrong keys sat above the group mean (advantage +0.24 each).
    cos = torch.tensor([[0.6] + [0.4] * 5 + [-0.1] * 4])
    criterion = GRPORMClassificationLoss(
        10, 10, reward=AccuracyReward() + UniformityReward(1.0, form="similarity")
    )
    with torch.no_grad():
        # keys = identity basis; a query embedding whose cosines to them are exactly `cos`
        criterion.prototypes.weight.copy_(torch.eye(10))
    embedding = cos.clone().requires_grad_(True)
    loss = criterion(embedding, torch.tensor([0]))
    rewards = np.array([1.0] + [-0.4] * 5 + [0.0] * 4)
    z = F.normalize(cos, dim=1)[0].numpy().astype(np.float64)  # the loss normalises the query
    rewards = np.concatenate([[1.0], -np.maximum(z[1:], 0)])
    adv = (rewards - rewards.mean()) / (rewards.std() + 1e-6)
    uncapped_positive = adv[1:][adv[1:] > 0]
    assert len(uncapped_positive) == 4  # the defect this guards against
    capped = np.concatenate([adv[:1], np.minimum(adv[1:], 0)])
    assert float(loss) == pytest.approx(-capped.sum() / 10, rel=1e-4)


@pytest.mark.parametrize("lam", [1.0, 2.0, 5.0])
def test_fused_path_loss_value_matches_a_hand_computation(lam: float) -> None:
    torch.manual_seed(3)
    criterion = GRPORMClassificationLoss(
        5, 8, temperature=0.5, reward=AccuracyReward() + UniformityReward(lam)
    )
    embeddings, labels = torch.randn(6, 8, dtype=torch.float64), torch.randint(0, 5, (6,))
    criterion.double()
    loss = criterion(embeddings, labels)  # the fused path (policy form, one step, beta = 0)
    logits = F.normalize(embeddings, dim=1) @ F.normalize(criterion.prototypes.weight, dim=1).T
    probs = (logits.detach() / 0.5).softmax(1).numpy()
    correct = F.one_hot(labels, 5).bool().numpy()
    rewards = np.where(correct, 1.0, -lam * probs)
    adv = (rewards - rewards.mean(1, keepdims=True)) / (rewards.std(1, keepdims=True) + 1e-6)
    adv = np.where(correct, adv, np.minimum(adv, 0))
    assert float(loss) == pytest.approx(-adv.sum() / adv.size, abs=1e-12)
    if lam > 1:  # the cap acts, so the loss is no longer ~0
        assert float(loss) > 1e-3


def test_sampled_group_index_keeps_the_true_class_and_is_reused_as_given() -> None:
    criterion = GRPORMPolicyLoss(ClassPrototypes(10, 4), group_size=3)
    embeddings, labels = torch.randn(5, 4), torch.randint(0, 10, (5,))
    full = criterion.old_policy(embeddings, labels)
    old_logits = full.similarities / criterion.temperature
    index = criterion.sample_group_index(old_logits, full.correct)
    assert index is not None and index.shape == (5, 3)
    assert (index == labels[:, None]).any(dim=1).all()  # the true class is always in the group
    losses = {float(criterion(embeddings, labels, old_logits, group_index=index)) for _ in range(5)}
    assert len(losses) == 1  # the same group every call: no resampling
