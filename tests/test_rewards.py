from __future__ import annotations

import pytest
import torch

from lightly_grpo.losses.grpo import group_advantages
from lightly_grpo.rewards import (
    AccuracyReward,
    RewardInputs,
    SumReward,
    UniformityReward,
    build_reward,
    default_reward,
)


def _inputs() -> RewardInputs:
    correct = torch.tensor([[True, False, False], [False, False, True]])
    old_logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 0.0]])
    sims = torch.tensor([[0.9, 0.4, -0.6], [0.1, 0.8, 0.3]])
    return RewardInputs(correct=correct, old_logits=old_logits, similarities=sims)


def test_accuracy_reward() -> None:
    assert AccuracyReward(2.0)(_inputs()).tolist() == [[2.0, 0.0, 0.0], [0.0, 0.0, 2.0]]


def test_uniformity_policy_form_punishes_confident_mistakes() -> None:
    inputs = _inputs()
    reward = UniformityReward(1.0, form="policy")(inputs)
    pi_old = torch.softmax(inputs.old_logits, -1)
    expected = torch.where(inputs.correct, torch.zeros(2, 3), -pi_old)
    assert torch.allclose(reward, expected)
    # second row: the wrong output with pi_old ~0.9 is punished hardest
    assert reward[1].argmin().item() == 1


def test_uniformity_similarity_form_clamped_and_unclamped() -> None:
    inputs = _inputs()
    clamped = UniformityReward(0.5, form="similarity")(inputs)
    assert clamped.tolist()[0] == pytest.approx([0.0, -0.2, 0.0])
    raw = UniformityReward(0.5, form="similarity", clamp=False)(inputs)
    assert raw.tolist()[0] == pytest.approx([0.0, -0.2, 0.3])


def test_policy_form_keeps_wrong_advantages_non_positive() -> None:
    torch.manual_seed(0)
    correct = torch.nn.functional.one_hot(torch.randint(0, 10, (64,)), 10).bool()
    inputs = RewardInputs(correct, 3 * torch.randn(64, 10), torch.rand(64, 10) * 2 - 1)
    advantages = group_advantages(default_reward()(inputs))
    assert (advantages[~correct] <= 1e-6).all()
    assert (advantages[correct] > 0).all()


def test_sum_reward_adds_and_flattens() -> None:
    inputs = _inputs()
    total = AccuracyReward() + UniformityReward(1.0) + AccuracyReward(0.5)
    assert isinstance(total, SumReward) and len(total.rewards) == 3
    expected = 1.5 * inputs.correct.float() + UniformityReward(1.0)(inputs)
    assert torch.allclose(total(inputs), expected)
    assert isinstance(build_reward(1.0, 0.0), AccuracyReward)


def test_bad_reward_arguments() -> None:
    with pytest.raises(ValueError, match="form must be one of"):
        UniformityReward(form="cosine")
    with pytest.raises(ValueError, match="weight must be >= 0, got -1"):
        UniformityReward(weight=-1.0)
    with pytest.raises(ValueError, match="empty list"):
        SumReward([])
