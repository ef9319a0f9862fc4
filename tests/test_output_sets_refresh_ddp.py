"""The refresh under DDP: two gloo processes each embed half the bank and gather the rest."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import TensorDataset

from lightly_grpo.distributed import broadcast_buffers
from lightly_grpo.losses import GRPORMClassificationLoss
from lightly_grpo.output_sets import NeighborOutputSet
from lightly_grpo.output_sets.refresh import embed_bank
from lightly_grpo.stage import GRPORMStage


def _stage() -> GRPORMStage:
    torch.manual_seed(0)  # the same weights on every rank
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(16, 8))
    return GRPORMStage(backbone, GRPORMClassificationLoss(3, 8))


def _dataset(n: int) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 1, 4, 4, generator=g), torch.arange(n) % 3)


def _worker(rank: int, world: int, init_file: str, n: int, out_dir: str) -> None:
    torch_dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        stage = _stage()
        bank = embed_bank(stage, _dataset(n), batch_size=3)
        output_set = NeighborOutputSet(n, 8, num_neighbors=2)
        output_set.refresh(bank)
        try:
            embed_bank(stage, _dataset(1), batch_size=3)
            error = ""
        except ValueError as raised:
            error = str(raised)
        # A table that differs on rank 1 becomes rank 0's (what a refresh does after building).
        other = NeighborOutputSet(n, 8, num_neighbors=2)
        other.neighbors.fill_(rank)
        broadcast_buffers(other)
        result = {
            "bank": bank,
            "neighbors": output_set.neighbors,
            "error": error,
            "broadcast": other.neighbors,
        }
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch_dist.destroy_process_group()


def test_every_rank_gets_the_single_process_bank_and_table(tmp_path: Path) -> None:
    # 11 items on 2 ranks: shards of 6 and 5 (padded for all_gather), interleaved back.
    n = 11
    os.environ.pop("LOCAL_RANK", None)
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), n, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single = embed_bank(_stage(), _dataset(n), batch_size=3)
    reference = NeighborOutputSet(n, 8, num_neighbors=2)
    reference.refresh(single)
    for result in ranks:
        assert result["bank"].shape == (n, 8)
        torch.testing.assert_close(result["bank"], single, rtol=1e-5, atol=1e-6)
        assert torch.equal(result["neighbors"], reference.neighbors)
        # A rank that would hold no data gets a clear error instead of a hang.
        assert result["error"] == "a pass over 1 items cannot be split across 2 ranks"
        assert bool((result["broadcast"] == 0).all())  # rank 0's values on both ranks
