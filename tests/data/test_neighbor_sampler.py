from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightly_grpo.data.neighbor_sampler import NeighborBatchSampler, reference_neighbors


def random_table(num_items: int, k: int, seed: int = 0) -> Tensor:
    """(N, k) table of distinct random neighbours per row, never the row's own index."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(num_items):
        others = np.delete(np.arange(num_items), i)
        rows.append(rng.choice(others, size=k, replace=False))
    return torch.as_tensor(np.stack(rows), dtype=torch.int64)


def anchors_of(batches: list[list[int]], sampler: NeighborBatchSampler) -> list[int]:
    return [b[i] for b in batches for i in sampler.batch_layout(len(b))[0].tolist()]


def test_batches_pair_each_anchor_with_a_row_neighbour() -> None:
    table = random_table(300, 6)
    sampler = NeighborBatchSampler(table, batch_size=32, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 300 // 16
    for batch in batches:
        assert len(batch) == 32
        # Layout written out by hand: anchor at even positions, its neighbour right after it.
        for anchor, partner in zip(batch[0::2], batch[1::2], strict=True):
            assert partner in table[anchor].tolist()
    anchors = [a for b in batches for a in b[0::2]]
    assert len(set(anchors)) == len(anchors)


@pytest.mark.parametrize(("batch_size", "per_anchor"), [(7, 2), (10, 3), (9, 1)])
def test_several_neighbours_and_fill_anchors(batch_size: int, per_anchor: int) -> None:
    table = random_table(200, 5, seed=1)
    sampler = NeighborBatchSampler(table, batch_size, neighbors_per_anchor=per_anchor, seed=0)
    groups = batch_size // (1 + per_anchor)
    fill = batch_size - groups * (1 + per_anchor)
    assert sampler.anchors_per_batch == groups + fill
    for batch in sampler:
        assert len(batch) == batch_size
        for g in range(groups):
            anchor = batch[g * (1 + per_anchor)]
            partners = batch[g * (1 + per_anchor) + 1 : (g + 1) * (1 + per_anchor)]
            assert len(set(partners)) == per_anchor
            assert set(partners) <= set(table[anchor].tolist())
        assert len(set(batch)) == batch_size  # rows of 5 out of 200 always leave a choice


@pytest.mark.parametrize(("num_items", "batch_size", "per_anchor"), [(50, 8, 1), (61, 7, 2)])
def test_every_item_is_anchor_once_without_drop_last(
    num_items: int, batch_size: int, per_anchor: int
) -> None:
    table = random_table(num_items, 4, seed=2)
    sampler = NeighborBatchSampler(
        table, batch_size, neighbors_per_anchor=per_anchor, drop_last=False, seed=5
    )
    batches = list(sampler)
    assert len(batches) == len(sampler) == -(-num_items // sampler.anchors_per_batch)
    assert all(len(b) == batch_size for b in batches[:-1])
    assert 1 + per_anchor <= len(batches[-1]) <= batch_size
    assert sorted(anchors_of(batches, sampler)) == list(range(num_items))
    for batch in batches:
        anchor_pos, neighbor_pos = sampler.batch_layout(len(batch))
        for a, ns in zip(anchor_pos.tolist(), neighbor_pos.tolist(), strict=False):
            assert {batch[n] for n in ns} <= set(table[batch[a]].tolist())


def test_drop_last_leaves_out_a_different_tail_each_epoch() -> None:
    table = random_table(50, 3)
    sampler = NeighborBatchSampler(table, batch_size=8, drop_last=True)
    missing = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == 50 // 4 and all(len(b) == 8 for b in batches)
        anchors = anchors_of(batches, sampler)
        assert len(set(anchors)) == len(anchors) == 48
        missing.append(set(range(50)) - set(anchors))
    assert missing[0] != missing[1]


def test_seed_and_epoch_determine_the_order() -> None:
    table = random_table(120, 5)
    a = NeighborBatchSampler(table, batch_size=16, seed=7)
    b = NeighborBatchSampler(table.clone(), batch_size=16, seed=7)
    assert list(a) == list(b)
    assert list(a) == list(a)  # iterating does not advance the epoch
    epoch0 = list(a)
    a.set_epoch(1)
    epoch1 = list(a)
    assert epoch1 != epoch0
    b.set_epoch(1)
    assert list(b) == epoch1
    a.set_epoch(0)
    assert list(a) == epoch0
    assert list(NeighborBatchSampler(table, batch_size=16, seed=8)) != epoch0


def test_neighbour_draw_is_uniform_over_the_row() -> None:
    k = 5
    table = random_table(2000, k, seed=4)
    sampler = NeighborBatchSampler(table, batch_size=20, neighbors_per_anchor=2, seed=0)
    counts: Counter[int] = Counter()
    for batch in sampler:
        for g in range(len(batch) // 3):
            row = table[batch[3 * g]].tolist()
            counts.update(row.index(n) for n in batch[3 * g + 1 : 3 * g + 3])
    total = sum(counts.values())
    # 20 = 6 groups of 3 and 2 fill anchors: 8 anchors a batch, 12 neighbour draws.
    assert len(sampler) == 2000 // 8 and total == len(sampler) * 12
    # Each of 1500 paired anchors draws a row position with probability 2/5: std of a count ~ 19.
    for position in range(k):
        assert abs(counts[position] - total / k) < 80


def test_duplicates_replaced_when_avoidable() -> None:
    # Every item neighbours every other, and half the items are anchors of a batch: the drawn
    # neighbours collide often, yet a batch of all N items without repeats always exists.
    n = 20
    table = torch.stack([torch.tensor([j for j in range(n) if j != i]) for i in range(n)])
    sampler = NeighborBatchSampler(table, batch_size=n, seed=0)
    for epoch in range(5):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == 2  # 10 anchors a batch
        for batch in batches:
            assert sorted(batch) == list(range(n))


def test_unavoidable_duplicate_kept() -> None:
    # Items pair up (0-1, 2-3); with k = 1 an anchor whose only neighbour is the other anchor
    # must repeat it.
    table = torch.tensor([[1], [0], [3], [2]])
    sampler = NeighborBatchSampler(table, batch_size=4, seed=0)
    seen_repeat = False
    for epoch in range(20):
        sampler.set_epoch(epoch)
        for batch in sampler:
            assert len(batch) == 4
            assert batch[1] == table[batch[0]].item() and batch[3] == table[batch[2]].item()
            seen_repeat |= len(set(batch)) < 4
    assert seen_repeat


@pytest.mark.parametrize("drop_last", [True, False])
def test_ranks_get_disjoint_interleaved_batches_of_equal_count(drop_last: bool) -> None:
    table = random_table(100, 4)
    # 100 items, 6 anchors a batch: 16 (17 without drop_last) batches; 3 ranks get 5 each.
    full = list(NeighborBatchSampler(table, 12, drop_last=drop_last, seed=1))
    ranks = [
        NeighborBatchSampler(table, 12, drop_last=drop_last, seed=1, num_replicas=3, rank=r)
        for r in range(3)
    ]
    per_rank = [list(s) for s in ranks]
    assert [len(s) for s in ranks] == [len(b) for b in per_rank] == [5, 5, 5]
    for r, batches in enumerate(per_rank):
        assert batches == full[r:15:3]
        assert all(len(b) == 12 for b in batches)
    anchors = [set(anchors_of(b, ranks[0])) for b in per_rank]
    assert not (anchors[0] & anchors[1] or anchors[0] & anchors[2] or anchors[1] & anchors[2])
    for s in ranks:
        s.set_epoch(2)
    assert [list(s) for s in ranks] != per_rank


def test_works_as_dataloader_batch_sampler() -> None:
    n = 64
    table = random_table(n, 3)
    sampler = NeighborBatchSampler(table, batch_size=10, drop_last=False, seed=2)
    loader = DataLoader(TensorDataset(torch.arange(n) * 10), batch_sampler=sampler)
    assert len(loader) == len(sampler)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        got = [(values // 10).tolist() for (values,) in loader]
        assert got == list(sampler)


class _Recorder(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[list[int]]] = []

    def on_train_epoch_start(self) -> None:
        self.seen.append([])

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        self.seen[-1].append(batch[0].tolist())
        return (self.weight * batch[0].float().mean()).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


@pytest.mark.filterwarnings("ignore")
def test_lightning_sets_the_epoch() -> None:
    table = random_table(40, 3)
    sampler = NeighborBatchSampler(table, batch_size=8, seed=4)
    module = _Recorder()
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(TensorDataset(torch.arange(40)), batch_sampler=sampler))
    expected = []
    for epoch in range(3):
        reference = NeighborBatchSampler(table, batch_size=8, seed=4)
        reference.set_epoch(epoch)
        expected.append(list(reference))
    assert module.seen == expected
    assert expected[0] != expected[1] != expected[2]


def test_batch_layout() -> None:
    sampler = NeighborBatchSampler(random_table(30, 4), batch_size=11, neighbors_per_anchor=3)
    anchors, neighbors = sampler.batch_layout(11)
    assert anchors.tolist() == [0, 4, 8, 9, 10]
    assert neighbors.tolist() == [[1, 2, 3], [5, 6, 7]]
    anchors, neighbors = sampler.batch_layout(4)
    assert anchors.tolist() == [0] and neighbors.tolist() == [[1, 2, 3]]
    for bad in (0, 5, 12):
        with pytest.raises(ValueError, match="length|batch_len"):
            sampler.batch_layout(bad)


def test_reference_neighbors_stay_in_their_cluster() -> None:
    gen = torch.Generator().manual_seed(0)
    centers = torch.eye(4, 16) * 10
    labels = torch.arange(4).repeat_interleave(25)
    embeddings = centers[labels] + 0.5 * torch.randn(100, 16, generator=gen)
    neighbors = reference_neighbors(embeddings, k=10, backend="torch")
    assert neighbors.shape == (100, 10) and neighbors.dtype == torch.int64
    assert torch.equal(labels[neighbors], labels[:, None].expand(-1, 10))
    assert not (neighbors == torch.arange(100)[:, None]).any()
    # Cosine, not Euclidean: rescaling an item does not change its neighbours' order.
    scaled = embeddings * torch.linspace(0.1, 10.0, 100)[:, None]
    assert torch.equal(reference_neighbors(scaled, k=10, backend="torch"), neighbors)
    sampler = NeighborBatchSampler(neighbors, batch_size=20)
    for batch in sampler:
        assert torch.equal(labels[batch[0::2]], labels[batch[1::2]])


def test_reference_neighbors_bad_input() -> None:
    x = torch.randn(5, 3)
    for k in (0, 5, 6):
        with pytest.raises(ValueError, match="k must"):
            reference_neighbors(x, k)
    with pytest.raises(ValueError, match="2-D|shape"):
        reference_neighbors(torch.randn(5), 2)
    with pytest.raises(ValueError, match="NaN|inf"):
        reference_neighbors(torch.tensor([[1.0, float("nan")], [1.0, 0.0], [0.0, 1.0]]), 1)
    with pytest.raises(ValueError, match="all-zero rows"):
        reference_neighbors(torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]), 1)


@pytest.mark.parametrize(
    ("neighbors", "match"),
    [
        (torch.tensor([1, 0]), r"2-D .*shape \(2,\)"),
        (torch.zeros(4, 0, dtype=torch.int64), r"shape \(4, 0\)"),
        (torch.tensor([[1.0], [0.0]]), "integer.*float32"),
        (torch.tensor([[True], [False]]), "integer.*bool"),
        (torch.tensor([[1], [2]]), r"\[0, 2\).*\[1, 2\]"),
        (torch.tensor([[1], [-1]]), r"\[0, 2\).*\[-1, 1\]"),
        (torch.tensor([[1, 2], [0, 1], [0, 1]]), "must not contain i.*first row 1"),
        ([[1], [0]], "integer torch.Tensor, got list"),
    ],
)
def test_bad_neighbor_table(neighbors: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NeighborBatchSampler(neighbors, batch_size=2)  # type: ignore[arg-type]


def test_bad_sampler_arguments() -> None:
    table = random_table(10, 3)
    with pytest.raises(ValueError, match=r"at least 1 \+ neighbors_per_anchor = 3"):
        NeighborBatchSampler(table, batch_size=2, neighbors_per_anchor=2)
    with pytest.raises(ValueError, match="neighbors_per_anchor must be at most k = 3"):
        NeighborBatchSampler(table, batch_size=8, neighbors_per_anchor=4)
    with pytest.raises(ValueError, match="neighbors_per_anchor must be >= 1"):
        NeighborBatchSampler(table, batch_size=8, neighbors_per_anchor=0)
    with pytest.raises(ValueError, match="N = 10 items.*fewer than one batch of batch_size = 12"):
        NeighborBatchSampler(table, batch_size=12)
    with pytest.raises(ValueError, match="2 batches .* fewer than one per rank"):
        NeighborBatchSampler(table, batch_size=8, num_replicas=3)
    with pytest.raises(ValueError, match=r"rank must lie in \[0, num_replicas = 2\), got 2"):
        NeighborBatchSampler(table, batch_size=4, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="seed"):
        NeighborBatchSampler(table, batch_size=4, seed=-1)
    with pytest.raises(ValueError, match="epoch"):
        NeighborBatchSampler(table, batch_size=4).set_epoch(-1)
    with pytest.raises(ValueError, match="got a sampler"):
        NeighborBatchSampler(NeighborBatchSampler(table, 4), batch_size=4)  # type: ignore[arg-type]
