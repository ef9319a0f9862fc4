"""The neighbour sampler under a real process group: built before the group exists (as the
unlabeled chain builds it, before Lightning starts its processes), it shards once iterated."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from lightly_grpo.data import NeighborBatchSampler

ITEMS, BATCH = 100, 12  # 6 anchors a batch: 16 batches an epoch, 8 per rank on 2 ranks


def _table() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    offsets = torch.stack([torch.randperm(ITEMS - 1, generator=g)[:4] + 1 for _ in range(ITEMS)])
    return (torch.arange(ITEMS)[:, None] + offsets) % ITEMS  # never an item's own index


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    sampler = NeighborBatchSampler(_table(), BATCH, seed=3)  # no process group yet
    before = len(sampler)
    torch_dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2
    )
    try:
        result = {
            "before": before,
            "after": len(sampler),
            "rank": sampler.rank,
            "batches": list(sampler),
            "explicit": list(NeighborBatchSampler(_table(), BATCH, seed=3, num_replicas=1, rank=0)),
        }
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch_dist.destroy_process_group()


def test_a_sampler_built_before_the_process_group_shards_when_iterated(tmp_path: Path) -> None:
    os.environ.pop("LOCAL_RANK", None)
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    full = list(NeighborBatchSampler(_table(), BATCH, seed=3))
    assert len(full) == 16
    for r, result in enumerate(ranks):
        assert result["before"] == 16 and result["after"] == 8 and result["rank"] == r
        assert result["batches"] == full[r::2]  # every other batch of the one-process epoch
        assert result["explicit"] == full  # given explicitly: the process group is not read
    assert not {i for b in ranks[0]["batches"] for i in b[::2]} & {
        i for b in ranks[1]["batches"] for i in b[::2]
    }  # the ranks' anchors are disjoint
