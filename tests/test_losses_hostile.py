"""Extreme and badly typed input through the public losses: a finite result or a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightly_grpo.losses import GRPORMClassificationLoss, GRPORMLoss, GRPORMPolicyLoss
from lightly_grpo.output_sets import ClassPrototypes


def test_an_old_policy_far_from_the_current_one_gives_a_finite_loss_and_gradient() -> None:
    logits = torch.zeros(1, 3, requires_grad=True)
    loss = GRPORMLoss()(
        logits, torch.tensor([[1.0, 0, 0]]), old_logits=torch.tensor([[100.0, 0, 0]])
    )
    loss.backward()
    assert torch.isfinite(loss)
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())


def test_dual_clip_bounds_a_negative_advantage_with_a_huge_ratio() -> None:
    # Output 1 is wrong (A = -0.71) and its ratio pi / pi_old is about 44,000: without the dual
    # clip its surrogate is rho * A (a loss near 10^4); with it, 3 * A (a loss near 0.9).
    logits = torch.tensor([[0.0, 10.0, 0.0]], requires_grad=True)
    old = torch.tensor([[0.0, -10.0, 0.0]])
    rewards = torch.tensor([[1.0, 0.0, 0.0]])
    loss = GRPORMLoss()(logits, rewards, old_logits=old)
    assert 0 < float(loss) < 10
    loss.backward()
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_classification_loss_takes_half_and_double_embeddings(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    criterion = GRPORMClassificationLoss(num_classes=4, embedding_size=8)
    embeddings = torch.randn(6, 8).to(dtype).requires_grad_(True)
    loss = criterion(embeddings, torch.tensor([0, 1, 2, 3, 0, 1]))
    loss.backward()
    assert torch.isfinite(loss)
    assert embeddings.grad is not None and embeddings.grad.dtype == dtype
    assert bool(torch.isfinite(embeddings.grad).all())


def test_half_precision_logits_with_large_rewards_stay_finite() -> None:
    logits = (torch.randn(4, 5) * 10).half().requires_grad_(True)
    rewards = torch.full((4, 5), 1e5)
    rewards[:, 0] = 7e4  # differences that overflow float16 (max 65504) after normalisation
    loss = GRPORMLoss()(logits, rewards)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad is not None
    assert bool(torch.isfinite(logits.grad).all())


@pytest.mark.parametrize(
    "labels", [[0, 1, 2, 3], np.array([0, 1, 2, 3]), torch.tensor([0, 1, 2, 3], dtype=torch.uint8)]
)
def test_labels_may_be_lists_numpy_or_small_integers(labels: object) -> None:
    criterion = GRPORMClassificationLoss(num_classes=4, embedding_size=8)
    loss = criterion(torch.randn(4, 8), labels)  # type: ignore[arg-type]
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: GRPORMLoss(beta=float("inf")), "beta must be a finite number"),
        (
            lambda: GRPORMPolicyLoss(ClassPrototypes(3, 4), temperature=1e-40),
            "temperature must be >=",
        ),
        (
            lambda: GRPORMClassificationLoss(3, 4)(
                torch.zeros(2, 4, dtype=torch.long), torch.tensor([0, 1])
            ),
            "must be floating point, got dtype torch.int64",
        ),
        (
            lambda: GRPORMClassificationLoss(3, 4)(torch.randn(2, 4), torch.tensor([0.0, 1.0])),
            "labels must be integers, got dtype torch.float32",
        ),
        (
            lambda: GRPORMClassificationLoss(3, 4)(torch.randn(2, 4), ["a", "b"]),
            "labels must be integers",
        ),
        (
            lambda: GRPORMClassificationLoss(3, 4)(
                torch.randn(2, 4), torch.tensor([0, 1]), old_logits=torch.full((2, 3), float("nan"))
            ),
            "old_logits contains NaN",
        ),
    ],
)
def test_bad_input_gets_a_clear_error(call: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()  # type: ignore[operator]


def test_a_label_just_past_a_huge_class_count_is_caught() -> None:
    from lightly_grpo.validation import check_labeled_batch

    # 2**30 + 1 rounds to 2**30 in float32; the batch check must compare labels exactly.
    num_classes = 2**30 + 1
    labels = torch.tensor([0, num_classes])
    with pytest.raises(ValueError, match=r"got \[1073741825\]"):
        check_labeled_batch(torch.randn(2, 3), labels, num_classes)
    check_labeled_batch(torch.randn(2, 3), torch.tensor([0, num_classes - 1]), num_classes)


@pytest.mark.parametrize("where", ["embeddings", "prototypes"])
def test_inf_in_embeddings_or_prototypes_is_named(where: str) -> None:
    criterion = GRPORMClassificationLoss(num_classes=3, embedding_size=4)
    embeddings = torch.randn(2, 4)
    if where == "embeddings":
        embeddings[1, 2] = float("inf")
        match = "embeddings contains NaN or inf: 1 value"
    else:
        with torch.no_grad():
            criterion.prototypes.weight[0, 0] = float("-inf")
        match = "prototypes contain NaN or inf"
    with pytest.raises(ValueError, match=match):
        criterion(embeddings, torch.tensor([0, 2]))
