"""The unlabeled neighbour output set, its reward, its refresh and the drop-in loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightly_grpo.data.indexed import IndexedDataset
from lightly_grpo.losses import GRPORMClassificationLoss, GRPORMNeighborLoss, GRPORMPolicyLoss
from lightly_grpo.output_sets import NeighborOutputSet, OutputSetRefresh, in_batch_candidates
from lightly_grpo.output_sets.base import output_set_from_config
from lightly_grpo.output_sets.refresh import embed_bank, interleave_shards
from lightly_grpo.rewards import (
    MaskReward,
    RewardInputs,
    UniformityReward,
    neighbor_reward,
    reward_from_config,
)
from lightly_grpo.stage import GRPORMStage
from tests.lightning_fit import fit_steps


def _clusters(per_cluster: int = 4, dim: int = 8, seed: int = 0) -> Tensor:
    """Three tight clusters of unit vectors: items 0..3, 4..7, 8..11."""
    g = torch.Generator().manual_seed(seed)
    centers = F.normalize(torch.randn(3, dim, generator=g), dim=1) * 5
    points = centers.repeat_interleave(per_cluster, 0) + 0.1 * torch.randn(
        3 * per_cluster, dim, generator=g
    )
    return F.normalize(points, dim=1)


def test_in_batch_candidates_are_every_other_row() -> None:
    columns = in_batch_candidates(5)
    assert columns.shape == (5, 4)
    for row in range(5):
        assert sorted(columns[row].tolist()) == [c for c in range(5) if c != row]
    with pytest.raises(ValueError, match="at least 2 rows"):
        in_batch_candidates(1)


def test_group_marks_the_other_view_correct_and_table_neighbours() -> None:
    bank = _clusters()
    output_set = NeighborOutputSet(num_items=12, embedding_size=8, num_neighbors=3)
    output_set.initialize(bank)
    # Neighbours of every item are the other 3 items of its cluster.
    for item in range(12):
        cluster = item // 4
        expected = {cluster * 4 + j for j in range(4)} - {item}
        assert set(output_set.neighbors[item].tolist()) == expected
    items = torch.tensor([0, 1, 5])  # 0 and 1 share a cluster, 5 does not
    views = torch.cat([bank[items], bank[items] + 0.01])
    group = output_set.group(views, items=items)
    assert group.similarities.shape == (6, 5)
    candidates = group.indices  # dataset index of every candidate
    assert torch.equal(group.correct, candidates == items.repeat(2).unsqueeze(1))
    assert group.correct.sum(dim=1).tolist() == [1] * 6
    # Row 0 (item 0): the candidates holding item 1 are neighbours, those holding item 5 are not.
    assert group.positive is not None
    assert torch.equal(group.positive, group.extras["neighbor"])
    row0 = {int(c): bool(n) for c, n in zip(candidates[0], group.positive[0], strict=True)}
    assert row0[1] and not row0[5]
    assert not bool((group.positive & group.correct).any())


def test_retrieval_mode_marks_the_same_class_correct() -> None:
    bank = _clusters()
    output_set = NeighborOutputSet(12, 8, num_neighbors=2, use_labels=True)
    output_set.initialize(bank)
    items = torch.tensor([0, 4, 8, 9])
    labels = torch.tensor([0, 1, 2, 2]).repeat(2)
    group = output_set.group(torch.cat([bank[items]] * 2), labels, items)
    # item 8's row: its other view and both views of item 9 (same class) are correct.
    assert int(group.correct[2].sum()) == 3
    with pytest.raises(ValueError, match="needs batches with labels"):
        output_set.group(torch.cat([bank[items]] * 2), None, items)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"items": None}, "dataset index"),
        ({"items": torch.tensor([0, 99])}, "item index 99 is out of range"),
        ({"items": torch.tensor([0.0, 1.0])}, "integer dataset indices"),
        ({"items": torch.tensor([0, 1, 2])}, "do not match 3 items"),
    ],
)
def test_group_rejects_bad_items(kwargs: dict[str, Tensor | None], match: str) -> None:
    output_set = NeighborOutputSet(12, 8, num_neighbors=2)
    output_set.initialize(_clusters())
    with pytest.raises(ValueError, match=match):
        output_set.group(torch.randn(4, 8), **kwargs)


def test_bad_construction_banks_and_uninitialised_use_raise() -> None:
    with pytest.raises(ValueError, match="num_neighbors must be in"):
        NeighborOutputSet(num_items=5, embedding_size=4, num_neighbors=5)
    output_set = NeighborOutputSet(12, 8, num_neighbors=2)
    with pytest.raises(ValueError, match="no neighbour table yet"):
        output_set.group(torch.randn(4, 8), items=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"shape \(12, 8\), got \(11, 8\)"):
        output_set.refresh(torch.randn(11, 8))
    with pytest.raises(ValueError, match="NaN"):
        output_set.refresh(torch.full((12, 8), float("nan")))
    output_set.initialize(_clusters())
    with pytest.raises(ValueError, match=r"shape \(rows, 8\)"):
        output_set.group(torch.randn(4, 7), items=torch.tensor([0, 1]))


def test_config_and_state_dict_round_trip() -> None:
    output_set = NeighborOutputSet(12, 8, num_neighbors=3)
    output_set.initialize(_clusters())
    rebuilt = output_set_from_config(output_set.config())
    assert isinstance(rebuilt, NeighborOutputSet) and not rebuilt.initialized
    rebuilt.load_state_dict(output_set.state_dict())
    assert torch.equal(rebuilt.neighbors, output_set.neighbors)
    assert rebuilt.initialized


def test_loading_an_empty_table_is_refused_though_a_full_one_was_seen() -> None:
    # `initialized` is cached on the host (a scan per batch costs O(N)); a loaded state dict
    # must clear the cache, or a step would index rows of -1s.
    output_set = NeighborOutputSet(12, 8, num_neighbors=2)
    empty = {name: value.clone() for name, value in output_set.state_dict().items()}
    output_set.initialize(_clusters())
    assert output_set.initialized
    output_set.load_state_dict(empty)
    with pytest.raises(ValueError, match="no neighbour table yet"):
        output_set.group(torch.randn(4, 8), items=torch.tensor([0, 1]))
    # A table copied in by hand is found by the scan.
    output_set.neighbors.copy_((torch.arange(12)[:, None] + torch.tensor([[1, 2]])) % 12)
    assert (
        output_set.group(torch.randn(4, 8), items=torch.tensor([0, 1])).similarities.shape[0] == 4
    )


def test_mask_reward_and_uniformity_spare_the_positives() -> None:
    correct = torch.tensor([[True, False, False]])
    neighbor = torch.tensor([[False, True, False]])
    inputs = RewardInputs(
        correct, torch.zeros(1, 3), torch.zeros(1, 3), {"neighbor": neighbor}, positive=neighbor
    )
    rewards = neighbor_reward(1.0, 0.5, 1.0)(inputs)
    assert rewards[0].tolist() == pytest.approx([1.0, 0.5, -1 / 3])
    assert UniformityReward(1.0)(inputs)[0, 1] == 0  # the neighbour is not penalised
    assert reward_from_config(MaskReward("neighbor", 0.25).config()) == MaskReward("neighbor", 0.25)
    with pytest.raises(ValueError, match="'missing'"):
        MaskReward("missing")(inputs)
    with pytest.raises(ValueError, match="weight must be"):
        MaskReward("neighbor", 0.0)


def test_neighbours_get_a_positive_advantage_in_the_policy_loss() -> None:
    # A neighbour's reward (0.5) lies above the group mean: its logit must be pushed up, which
    # the cap on wrong outputs' advantages would forbid if neighbours were not exempt.
    bank = _clusters()
    output_set = NeighborOutputSet(12, 8, num_neighbors=3)
    output_set.initialize(bank)
    loss_fn = GRPORMPolicyLoss(output_set, temperature=0.5, reward=neighbor_reward())
    items = torch.tensor([0, 1, 5, 9])
    embeddings = torch.cat([bank[items], bank[items]]).requires_grad_(True)
    group = output_set.group(embeddings.detach(), items=items)
    similarities = group.similarities.clone().requires_grad_(True)
    logits = similarities / 0.5
    rewards = loss_fn.reward(
        RewardInputs(
            group.correct,
            logits.detach(),
            similarities.detach(),
            group.extras,
            positive=group.positive,
        )
    )
    loss = loss_fn.grpo(logits, rewards, correct=group.rewarded())
    loss.backward()
    assert similarities.grad is not None
    assert group.positive is not None
    # Gradient descent raises a logit whose gradient is negative.
    neighbour_grads = similarities.grad[group.positive]
    assert len(neighbour_grads) > 0 and bool((neighbour_grads < 0).all())
    # The full loss on the embeddings is finite and has a gradient.
    total = loss_fn(embeddings, items=items)
    total.backward()
    assert torch.isfinite(total) and embeddings.grad is not None


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _two_view_dataset(n: int = 24) -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 1, 4, 4, generator=g)
    labels = torch.arange(n) % 3

    class TwoViews(TensorDataset):
        def __getitem__(self, i: int) -> tuple[list[Tensor], Tensor]:  # type: ignore[override]
            x, y = super().__getitem__(i)
            return [x + 0.05 * torch.randn_like(x), x + 0.05 * torch.randn_like(x)], y

    return TwoViews(images, labels), TensorDataset(images, labels)


def test_stage_trains_on_indexed_two_view_batches_and_refreshes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    train, bank_data = _two_view_dataset()
    output_set = NeighborOutputSet(24, 8, num_neighbors=3)
    stage = GRPORMStage(
        _Tiny(),
        criterion=GRPORMPolicyLoss(output_set, reward=neighbor_reward()),
        batchnorm="train",
        lr_backbone=1e-2,
    )
    output_set.initialize(embed_bank(stage, bank_data, batch_size=10))
    before = output_set.neighbors.clone()
    refresh = OutputSetRefresh(bank_data, every_n_epochs=1, batch_size=10)
    loader = DataLoader(IndexedDataset(train), batch_size=8, shuffle=True)
    weight = stage.backbone.net[1].weight.detach().clone()
    trainer = fit_steps(stage, loader, tmp_path, steps=6, callbacks=[refresh])  # 2 epochs
    assert trainer.global_step == 6
    assert not torch.equal(weight, stage.backbone.net[1].weight)
    assert len(refresh.seconds) == 1  # after epoch 1, not after the last one
    # The refreshed table is the kNN table of the trained model's bank.
    fresh = NeighborOutputSet(24, 8, num_neighbors=3)
    stage.eval()
    fresh.refresh(embed_bank(stage, bank_data, batch_size=10))
    assert output_set.neighbors.shape == before.shape
    assert torch.isfinite(trainer.callback_metrics["train/reward"])

    # Batches without indices get a clear error.
    plain = DataLoader(train, batch_size=8)
    with pytest.raises(ValueError, match="IndexedDataset"):
        stage.train()
        stage.training_step(next(iter(plain)), 0)


def test_embed_bank_keeps_dataset_order_and_interleave_undoes_striding() -> None:
    _, bank_data = _two_view_dataset(10)
    module = GRPORMStage(_Tiny(), GRPORMClassificationLoss(3, 8))
    bank = embed_bank(module, bank_data, batch_size=3)
    with torch.no_grad():
        module.eval()
        direct = F.normalize(module(bank_data.tensors[0]), dim=1)
    torch.testing.assert_close(bank, direct)
    shards = [torch.arange(0, 10, 3), torch.arange(1, 10, 3), torch.tensor([2, 5, 8, -1])]
    shards[0] = torch.cat([shards[0]])  # 0, 3, 6, 9
    shards[1] = torch.cat([shards[1], torch.tensor([-1])])  # 1, 4, 7, pad
    assert interleave_shards(shards, 10).tolist() == list(range(10))


def test_drop_in_neighbor_loss_fills_its_bank_and_rewards_neighbours() -> None:
    torch.manual_seed(0)
    criterion = GRPORMNeighborLoss(num_neighbors=2, memory_bank_size=16)
    bank = _clusters(per_cluster=8)
    out0 = bank[:8].clone().requires_grad_(True)  # 8 points, two clusters... all cluster 0
    out1 = bank[:8] + 0.01
    loss = criterion(out0, out1)
    loss.backward()
    assert torch.isfinite(loss) and out0.grad is not None
    assert criterion.filled == 8
    criterion(bank[8:16], bank[8:16])
    assert criterion.filled == 16
    # With a full bank, points of one tight cluster are each other's neighbours.
    z = F.normalize(torch.cat([bank[:4], bank[:4]]), dim=1)
    columns = in_batch_candidates(8)
    mask = criterion.neighbor_mask(z, (z @ z.t()).gather(1, columns), columns)
    assert bool(mask.any())
    with pytest.raises(ValueError, match="same images"):
        criterion(torch.randn(4, 8), torch.randn(5, 8))
    with pytest.raises(ValueError, match="NaN"):
        criterion(torch.full((4, 8), float("nan")), torch.randn(4, 8))
    with pytest.raises(ValueError, match="memory_bank_size"):
        GRPORMNeighborLoss(num_neighbors=20, memory_bank_size=10)


def test_stage_predicts_classes_only_with_class_prototypes() -> None:
    from lightly_grpo.output_sets import ClassPrototypes, KMeansPrototypes

    def stage_of(output_set: object) -> GRPORMStage:
        return GRPORMStage(_Tiny(), criterion=GRPORMPolicyLoss(output_set))  # type: ignore[arg-type]

    assert stage_of(ClassPrototypes(3, 8)).can_predict_classes()
    assert not stage_of(KMeansPrototypes(3, 8)).can_predict_classes()
    assert not stage_of(NeighborOutputSet(12, 8, 2)).can_predict_classes()
    assert not stage_of(NeighborOutputSet(12, 8, 2, use_labels=True)).can_predict_classes()
    assert stage_of(NeighborOutputSet(12, 8, 2)).classifier_fn() is None


def test_small_batches_use_every_candidate_or_fail_clearly() -> None:
    output_set = NeighborOutputSet(12, 8, num_neighbors=2)
    output_set.initialize(_clusters())
    # group_size at or above the batch's 2B - 1 candidates enumerates them all (as for any set).
    sampled = GRPORMPolicyLoss(output_set, group_size=8)
    full = GRPORMPolicyLoss(output_set)
    embeddings, items = torch.randn(4, 8), torch.tensor([0, 5])
    assert torch.equal(sampled(embeddings, items=items), full(embeddings, items=items))
    with pytest.raises(ValueError, match="at least 2 rows, got 1"):
        full(torch.randn(1, 8), items=torch.tensor([0]))


def test_switching_positives_off_and_labels_overrule_the_table() -> None:
    bank = _clusters()
    items = torch.tensor([0, 1, 5])
    views = torch.cat([bank[items]] * 2)
    plain = NeighborOutputSet(12, 8, num_neighbors=3, neighbors_positive=False)
    plain.initialize(bank)
    group = plain.group(views, items=items)
    assert group.positive is None and bool(group.extras["neighbor"].any())
    # Retrieval mode: item 1 is a table neighbour of item 0 but of another class: wrong.
    labeled = NeighborOutputSet(12, 8, num_neighbors=3, use_labels=True)
    labeled.initialize(bank)
    group = labeled.group(views, torch.tensor([0, 1, 0]).repeat(2), items)
    assert group.positive is not None and not bool(group.positive.any())
    candidates = group.indices[0]
    assert not bool(group.correct[0][candidates == 1].any())
    assert bool(group.correct[0][candidates == 5].all())  # same class (0), not a neighbour


def test_a_refresh_also_updates_the_batch_sampler(tmp_path: Path) -> None:
    from lightly_grpo.data import NeighborBatchSampler

    torch.manual_seed(0)
    train, bank_data = _two_view_dataset()
    output_set = NeighborOutputSet(24, 8, num_neighbors=3)
    stage = GRPORMStage(
        _Tiny(), criterion=GRPORMPolicyLoss(output_set), batchnorm="train", lr_backbone=0.05
    )
    output_set.initialize(embed_bank(stage, bank_data, batch_size=10))
    sampler = NeighborBatchSampler(output_set.neighbors, batch_size=8, seed=0)
    loader = DataLoader(IndexedDataset(train), batch_sampler=sampler)
    refresh = OutputSetRefresh(bank_data, every_n_epochs=1, batch_size=10)
    fit_steps(stage, loader, tmp_path, steps=2 * len(sampler), callbacks=[refresh])
    assert len(refresh.seconds) == 1
    assert torch.equal(torch.from_numpy(sampler._neighbors), output_set.neighbors)
    with pytest.raises(ValueError, match=r"shape \(24, >= 1\), got \(4, 3\)"):
        sampler.set_neighbors(output_set.neighbors[:4] % 4)


def test_training_mines_from_the_modules_table_not_the_one_the_sampler_was_built_with(
    tmp_path: Path,
) -> None:
    # Under DDP the module's table is rank 0's (broadcast when Lightning wraps the module) and
    # on resume the checkpoint's: the sampler, built before fit, must follow it.
    from lightly_grpo.data import NeighborBatchSampler
    from lightly_grpo.output_sets import MineFromOutputSet

    torch.manual_seed(0)
    train, bank_data = _two_view_dataset()
    output_set = NeighborOutputSet(24, 8, num_neighbors=3)
    stage = GRPORMStage(_Tiny(), criterion=GRPORMPolicyLoss(output_set), batchnorm="train")
    output_set.initialize(embed_bank(stage, bank_data, batch_size=10))
    # Another valid table of the same items: i's neighbours are i + 1, i + 2, i + 3 (mod 24).
    stale = (torch.arange(24)[:, None] + torch.arange(1, 4)[None, :]) % 24
    assert not torch.equal(stale, output_set.neighbors)
    sampler = NeighborBatchSampler(stale, batch_size=8, seed=0)
    loader = DataLoader(IndexedDataset(train), batch_sampler=sampler)
    fit_steps(stage, loader, tmp_path / "without", steps=1)
    assert torch.equal(torch.from_numpy(sampler._neighbors), stale)  # nothing re-points it
    fit_steps(stage, loader, tmp_path / "with", steps=1, callbacks=[MineFromOutputSet()])
    assert torch.equal(torch.from_numpy(sampler._neighbors), output_set.neighbors)
