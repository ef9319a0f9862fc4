"""Property-based fuzzing of the rewards and the output sets: finite results or clear errors.

Rewards get hostile weights (NaN, inf, huge, negative, non-numbers) and hostile inputs (NaN/inf
logits, wrong shapes and dtypes, float16); the output sets (ClassPrototypes, NeighborOutputSet,
KMeansPrototypes) get hostile embeddings, labels, items and constructor arguments.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from lightly_grpo.output_sets import ClassPrototypes, KMeansPrototypes, NeighborOutputSet
from lightly_grpo.rewards import (
    MAX_REWARD_WEIGHT,
    AccuracyReward,
    MaskReward,
    RewardInputs,
    UniformityReward,
    build_reward,
    neighbor_reward,
)
from tests.test_fuzz_losses import assert_finite_or_clear_error, hostile_tensors

FUZZ = settings(max_examples=40, deadline=None, derandomize=True)


def checked_gradient(x: Tensor) -> Tensor:
    """The gradient of ``x`` for the finiteness check; empty for float16 inputs, whose gradient
    through the normalisation (about 1 / |x|) overflows float16's 65504 for tiny rows: a range
    limit of the dtype (see the half-precision tests of the losses), not a NaN bug."""
    assert x.grad is not None, "backward() left no gradient on the input"
    return x.grad.new_zeros(0).float() if x.dtype == torch.float16 else x.grad.float()


#: Weights a config file or a CLI flag might carry, sensible or not.
WEIGHTS: tuple[Any, ...] = (
    0.0,
    1e-30,
    0.5,
    1.0,
    1e6,
    MAX_REWARD_WEIGHT,
    MAX_REWARD_WEIGHT * 10,
    1e300,
    -1.0,
    math.nan,
    math.inf,
    True,
    "1.0",
    None,
)


def _group_shapes() -> st.SearchStrategy[tuple[int, int]]:
    return st.tuples(st.integers(0, 4), st.integers(1, 5))


@st.composite
def reward_inputs(draw: st.DrawFn) -> RewardInputs:
    """RewardInputs with hostile old logits and similarities; masks of every kind (none, all,
    one per row) and an optional neighbour mask."""
    shape = draw(_group_shapes(), label="shape")
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    kind = draw(st.sampled_from(["none", "all", "random"]), label="correct")
    correct = {
        "none": torch.zeros(shape, dtype=torch.bool),
        "all": torch.ones(shape, dtype=torch.bool),
        "random": torch.rand(shape, generator=g) < 0.3,
    }[kind]
    old_logits = draw(hostile_tensors(shape), label="old_logits")
    similarities = draw(hostile_tensors(shape, dtypes=[old_logits.dtype]), label="similarities")
    neighbor = (torch.rand(shape, generator=g) < 0.3) & ~correct
    return RewardInputs(
        correct=correct,
        old_logits=old_logits,
        similarities=similarities,
        extras={"neighbor": neighbor},
        positive=neighbor if draw(st.booleans()) else None,
    )


# ---------------------------------------------------------------------------- rewards
@FUZZ
@given(
    accuracy=st.sampled_from(WEIGHTS),
    uniformity=st.sampled_from(WEIGHTS),
    neighbor=st.sampled_from(WEIGHTS),
    form=st.sampled_from(["policy", "similarity", "cosine"]),
    clamp=st.booleans(),
)
def test_reward_constructors_accept_usable_weights_and_name_bad_ones(
    accuracy: Any, uniformity: Any, neighbor: Any, form: str, clamp: bool
) -> None:
    builders = [
        (lambda: AccuracyReward(accuracy), ["weight"]),
        (lambda: UniformityReward(uniformity, form=form, clamp=clamp), ["weight", "form"]),
        (lambda: MaskReward("neighbor", neighbor), ["weight"]),
        (
            lambda: neighbor_reward(accuracy, neighbor, uniformity),
            ["instance", "neighbor", "uniformity"],
        ),
        (lambda: build_reward(accuracy, uniformity, form), ["accuracy", "uniformity", "form"]),
    ]
    inputs = RewardInputs(
        correct=torch.tensor([[True, False, False]]),
        old_logits=torch.tensor([[0.0, 2.0, -1.0]]),
        similarities=torch.tensor([[1.0, 0.5, -0.5]]),
        extras={"neighbor": torch.tensor([[False, True, False]])},
    )
    for build, names in builders:
        reward = assert_finite_or_clear_error(build, names=names)
        if reward is not None:
            # A constructed reward never scores NaN/inf on sane inputs.
            assert_finite_or_clear_error(lambda: reward(inputs))  # noqa: B023


@FUZZ
@given(
    inputs=reward_inputs(),
    weight=st.sampled_from([0.5, 1.0, 1e6, MAX_REWARD_WEIGHT]),
    form=st.sampled_from(["policy", "similarity"]),
)
def test_rewards_on_hostile_inputs_are_finite_or_a_clear_error(
    inputs: RewardInputs, weight: float, form: str
) -> None:
    rewards = [
        AccuracyReward(weight),
        UniformityReward(weight, form=form, clamp=False),
        MaskReward("neighbor", weight),
        neighbor_reward(1.0, weight, weight),
        AccuracyReward() + UniformityReward(weight, form=form),
    ]
    for reward in rewards:
        result = assert_finite_or_clear_error(
            lambda: reward(inputs),  # noqa: B023
            names=["old_logits", "similarities", "overflowed"],
        )
        if result is not None:
            assert result.shape == inputs.correct.shape
            # Scored in at least float32: float16 inputs cannot overflow a weighted reward.
            assert result.dtype in (torch.float32, torch.float64)


@FUZZ
@given(
    correct=st.sampled_from(
        [
            torch.ones(2, 3),
            torch.ones(2, 3, dtype=torch.long),
            torch.ones(3, dtype=torch.bool),
            torch.ones(2, 3, dtype=torch.bool),
            [[True, False]],
        ]
    ),
    old_shape=st.sampled_from([(2, 3), (3, 2), (2,), (0, 3)]),
    old_dtype=st.sampled_from([torch.float32, torch.float16, torch.long]),
    positive=st.sampled_from([None, torch.ones(2, 3), torch.ones(2, 3, dtype=torch.bool)]),
    extra=st.sampled_from([torch.ones(2, 3, dtype=torch.bool), torch.ones(1, 3), "mask"]),
)
def test_reward_inputs_reject_bad_shapes_and_dtypes_by_name(
    correct: Any, old_shape: tuple[int, ...], old_dtype: torch.dtype, positive: Any, extra: Any
) -> None:
    def build_and_score() -> Tensor:
        inputs = RewardInputs(
            correct=correct,
            old_logits=torch.zeros(old_shape, dtype=old_dtype),
            similarities=torch.zeros(old_shape, dtype=old_dtype),
            extras={"neighbor": extra},
            positive=positive,
        )
        return (AccuracyReward() + MaskReward() + UniformityReward())(inputs)

    assert_finite_or_clear_error(
        build_and_score,
        names=["correct", "old_logits", "similarities", "positive", "extras", "neighbor"],
    )


# ---------------------------------------------------------------------------- output sets
@FUZZ
@given(
    num_classes=st.sampled_from([2, 3, 1, 0, 2.5, True, "3", math.nan]),
    embedding_size=st.sampled_from([4, 1, 0, -1, 4.0, None]),
)
def test_class_prototypes_constructor_names_bad_sizes(
    num_classes: Any, embedding_size: Any
) -> None:
    assert_finite_or_clear_error(
        lambda: ClassPrototypes(num_classes, embedding_size).keys(),
        names=["num_classes", "embedding_size"],
    )


@FUZZ
@given(
    data=st.data(),
    batch=st.integers(0, 4),
    dim=st.sampled_from([4, 4, 4, 3]),
    labels=st.sampled_from(
        ["ok", "ok", "ok", "same", "same", "out_of_range", "negative", "float", "short", "list"]
    ),
)
def test_class_prototypes_group_is_finite_or_a_clear_error(
    data: st.DataObject, batch: int, dim: int, labels: str
) -> None:
    torch.manual_seed(0)
    prototypes = ClassPrototypes(3, 4)
    embeddings = data.draw(hostile_tensors((batch, dim)), label="embeddings")
    label_tensor: Any = {
        "ok": torch.arange(batch) % 3,
        "same": torch.zeros(batch, dtype=torch.long),
        "out_of_range": torch.full((batch,), 3),
        "negative": torch.full((batch,), -1),
        "float": torch.zeros(batch),
        "short": torch.zeros(max(batch - 1, 0), dtype=torch.long),
        "list": [0] * batch,
    }[labels]

    def group_and_gradient() -> tuple[Tensor, Tensor, Tensor]:
        x = embeddings.clone().requires_grad_(True)
        group = prototypes.group(x, label_tensor)
        group.similarities.sum().backward()
        assert bool((group.correct.sum(dim=1) == 1).all()), "exactly one correct class per row"
        return group.similarities, checked_gradient(x), prototypes.predict(embeddings).float()

    result = assert_finite_or_clear_error(group_and_gradient, names=["embeddings", "labels"])
    if result is not None:
        assert bool((result[0].abs() <= 1 + 1e-5).all()), "similarities are cosines"


@FUZZ
@given(
    num_items=st.sampled_from([2, 5, 1, 3.0, "5"]),
    embedding_size=st.sampled_from([3, 0, True]),
    num_neighbors=st.sampled_from([1, 4, 5, 0, 1.5]),
    backend=st.sampled_from(["auto", "torch", "gpu"]),
)
def test_neighbor_output_set_constructor_names_bad_arguments(
    num_items: Any, embedding_size: Any, num_neighbors: Any, backend: str
) -> None:
    assert_finite_or_clear_error(
        lambda: NeighborOutputSet(num_items, embedding_size, num_neighbors, backend=backend),
        names=["num_items", "embedding_size", "num_neighbors", "backend"],
    )


@FUZZ
@given(
    data=st.data(),
    images=st.integers(0, 3),
    views=st.integers(1, 2),
    items=st.sampled_from(["ok", "out_of_range", "float", "none", "list", "text"]),
    use_labels=st.booleans(),
)
def test_neighbor_output_set_group_is_finite_or_a_clear_error(
    data: st.DataObject, images: int, views: int, items: str, use_labels: bool
) -> None:
    neighbors = NeighborOutputSet(
        num_items=6, embedding_size=3, num_neighbors=2, use_labels=use_labels, backend="torch"
    )
    bank = data.draw(hostile_tensors((6, 3)), label="bank")
    initialized = assert_finite_or_clear_error(
        lambda: neighbors.initialize(bank), names=["embeddings"]
    )
    if initialized is None and not neighbors.initialized:
        neighbors.initialize(
            F.normalize(torch.randn(6, 3, generator=torch.Generator().manual_seed(0)))
        )
    embeddings = data.draw(hostile_tensors((images * views, 3)), label="embeddings")
    item_values: Any = {
        "ok": torch.arange(images),
        "out_of_range": torch.arange(images) + 6,
        "float": torch.arange(images).float(),
        "none": None,
        "list": list(range(images)),
        "text": "items",
    }[items]
    labels = (torch.arange(images) % 2).repeat(views)

    def group_and_gradient() -> tuple[Tensor, Tensor]:
        x = embeddings.clone().requires_grad_(True)
        group = neighbors.group(x, labels=labels, items=item_values)
        group.similarities.sum().backward()
        assert group.similarities.shape == (images * views, images * views - 1)
        return group.similarities, checked_gradient(x)

    assert_finite_or_clear_error(group_and_gradient, names=["embeddings", "items", "index", "rows"])


@FUZZ
@given(
    num_clusters=st.sampled_from([2, 3, 1, 2.0]),
    sinkhorn_epsilon=st.sampled_from([0.05, 1e-30, 1e30, 0.0, -1.0, math.nan, "x", None]),
    sinkhorn_iterations=st.sampled_from([1, 3, 0]),
)
def test_kmeans_prototypes_constructor_names_bad_arguments(
    num_clusters: Any, sinkhorn_epsilon: Any, sinkhorn_iterations: int
) -> None:
    assert_finite_or_clear_error(
        lambda: KMeansPrototypes(
            num_clusters,
            4,
            sinkhorn_iterations=sinkhorn_iterations,
            sinkhorn_epsilon=sinkhorn_epsilon,
            kmeans_iterations=2,
        ),
        names=["num_clusters", "sinkhorn_epsilon", "sinkhorn_iterations"],
    )


@settings(FUZZ, max_examples=25)  # each example runs k-means
@given(
    data=st.data(),
    bank_size=st.integers(1, 6),
    rows=st.integers(0, 5),
    epsilon=st.sampled_from([0.05, 1e-3, 1.0, 1e6]),
)
def test_kmeans_prototypes_refresh_and_group_are_finite_or_a_clear_error(
    data: st.DataObject, bank_size: int, rows: int, epsilon: float
) -> None:
    prototypes = KMeansPrototypes(2, 4, sinkhorn_epsilon=epsilon, kmeans_iterations=2)
    bank = data.draw(hostile_tensors((bank_size, 4)), label="bank")
    assert_finite_or_clear_error(
        lambda: prototypes.refresh(bank), names=["embeddings", "num_clusters", "dimension"]
    )
    if not prototypes._is_initialized:
        prototypes.refresh(torch.randn(8, 4, generator=torch.Generator().manual_seed(0)))
    assert bool(torch.isfinite(prototypes.centroids).all())
    embeddings = data.draw(hostile_tensors((rows, 4)), label="embeddings")

    def group_and_gradient() -> tuple[Tensor, Tensor]:
        x = embeddings.clone().requires_grad_(True)
        group = prototypes.group(x)
        group.similarities.sum().backward()
        assert bool((group.correct.sum(dim=1) == 1).all()), "one target cluster per view"
        return group.similarities, checked_gradient(x)

    assert_finite_or_clear_error(group_and_gradient, names=["embeddings", "two views", "Sinkhorn"])
