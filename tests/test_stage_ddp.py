"""Lightning DDP (gloo, 2 CPU processes): a stage step equals one process's global-batch step.

Each output set, and each pytorch-metric-learning baseline (SupCon, ProxyAnchor), is fitted for
one step twice: with ``strategy="ddp", devices=2`` in two processes (every rank gets half of the
global batch from Lightning's ``DistributedSampler``) and in one process on the same global batch
in the order the gather rebuilds. The loss and every parameter gradient (after DDP's averaging)
must agree to float32 rounding.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from pytorch_metric_learning.losses import ProxyAnchorLoss, SupConLoss
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from lightly_grpo.baselines import MetricLossBaseline
from lightly_grpo.losses import GRPORMClassificationLoss
from lightly_grpo.losses.policy import GRPORMPolicyLoss
from lightly_grpo.output_sets import KMeansPrototypes, NeighborOutputSet
from lightly_grpo.posttraining import PostTrainingModule
from lightly_grpo.stage import GRPORMStage

ITEMS, PER_RANK, DIM = 16, 8, 8


class TwoViews(Dataset[Any]):
    """Fixed 'augmented' views, labels and dataset indices: lightly's (views, label, index)."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(3)
        self.x = torch.randn(ITEMS, 1, 4, 4, generator=g)
        self.noise = 0.3 * torch.randn(ITEMS, 1, 4, 4, generator=g)

    def __len__(self) -> int:
        return ITEMS

    def __getitem__(self, i: int) -> tuple[list[Tensor], int, int]:
        return [self.x[i], self.x[i] + self.noise[i]], i % 3, i


class RecordStep(pl.Callback):
    """Saves this rank's loss and parameter gradients (after DDP's all-reduce) of step 0."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.grads: dict[str, Tensor] = {}

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        self.grads = {
            name: p.grad.detach().clone()
            for name, p in pl_module.named_parameters()
            if p.grad is not None
        }

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        record = {"loss": loss.detach().clone(), "grads": self.grads}
        torch.save(record, self.out / f"rank{trainer.global_rank}_of{trainer.world_size}.pt")


def _stage(output_set: str, gather: bool = True) -> PostTrainingModule:
    torch.manual_seed(0)  # identical weights in every run
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(16, DIM))
    if output_set in ("supcon", "proxyanchor"):  # the pytorch-metric-learning baselines
        loss: Any = (
            SupConLoss(temperature=0.1)
            if output_set == "supcon"
            else ProxyAnchorLoss(num_classes=3, embedding_size=DIM)
        )
        return MetricLossBaseline(backbone, loss, gather_distributed=gather)
    if output_set == "classes":
        stage = GRPORMStage(backbone, GRPORMClassificationLoss(3, DIM), gather_distributed=gather)
        stage.init_criterion(DataLoader(TwoViews(), batch_size=ITEMS))
        return stage
    with torch.no_grad():
        bank = F.normalize(backbone(TwoViews().x), dim=1)
    if output_set == "neighbors":
        outputs: Any = NeighborOutputSet(ITEMS, DIM, num_neighbors=2, backend="torch")
    else:
        outputs = KMeansPrototypes(num_clusters=3, embedding_size=DIM)
    outputs.initialize(bank)
    criterion = GRPORMPolicyLoss(outputs, temperature=0.2)
    return GRPORMStage(backbone, criterion=criterion, gather_distributed=gather)


CASES = {
    "classes": True,
    "neighbors": True,
    "kmeans": True,
    "supcon": True,
    "proxyanchor": True,
    "neighbors-local": False,
    # Rank 1 initialised its neighbour table apart from rank 0: the fit starts from rank 0's
    # (DDP broadcasts the module's buffers when Lightning wraps it).
    "neighbors-perturbed": True,
}


def _fit(stage: PostTrainingModule, loader: DataLoader[Any], out: Path, devices: int) -> None:
    trainer = pl.Trainer(
        max_steps=1,
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
        callbacks=[RecordStep(out)],
    )
    trainer.fit(stage, loader)


def _worker(rank: int, port: int, root: str) -> None:
    # Lightning's DDP in processes started outside it (as torchrun or SLURM would): with these
    # variables set, its "ddp" strategy joins them instead of launching its own, so one spawn
    # serves every case.
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": "2",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "NODE_RANK": "0",
        }
    )
    torch.set_num_threads(1)
    for case, gather in CASES.items():
        stage = _stage(case.split("-")[0], gather)
        if case.endswith("-perturbed") and rank == 1:
            table = stage.criterion.output_set.neighbors
            table.copy_((torch.arange(ITEMS)[:, None] + torch.tensor([[3, 5]])) % ITEMS)
        _fit(stage, DataLoader(TwoViews(), batch_size=PER_RANK), Path(root) / case, 2)


@pytest.fixture(scope="module")
def ddp_records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    for case in CASES:
        (root / case).mkdir()
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_worker, args=(port, str(root)), nprocs=2, join=True)
    # Lightning's DistributedSampler (no shuffling) gives rank r the items r, r + 2, ...; the
    # gather puts rank 0's images before rank 1's: one process sees the batch in that order.
    order = list(range(0, ITEMS, 2)) + list(range(1, ITEMS, 2))
    for case, gather in CASES.items():
        loader = DataLoader(Subset(TwoViews(), order), batch_size=ITEMS)
        _fit(_stage(case.split("-")[0], gather), loader, root / case, 1)
    return root


def _records(root: Path, case: str) -> tuple[list[dict], dict]:
    ranks = [torch.load(root / case / f"rank{r}_of2.pt", weights_only=True) for r in range(2)]
    return ranks, torch.load(root / case / "rank0_of1.pt", weights_only=True)


@pytest.mark.parametrize(
    "output_set",
    ["classes", "neighbors", "kmeans", "supcon", "proxyanchor", "neighbors-perturbed"],
)
def test_ddp_step_equals_one_process_on_the_global_batch(
    output_set: str, ddp_records: Path
) -> None:
    ranks, single = _records(ddp_records, output_set)
    assert single["grads"], "no gradients were recorded"
    for record in ranks:
        torch.testing.assert_close(record["loss"], single["loss"], rtol=1e-5, atol=1e-6)
        assert record["grads"].keys() == single["grads"].keys()
        for name, grad in single["grads"].items():
            assert grad.abs().sum() > 0, f"{name}: zero gradient proves nothing"
            # float32 sums in another order (two half batches, then DDP's mean): rounding only.
            torch.testing.assert_close(record["grads"][name], grad, rtol=1e-4, atol=1e-6)


def test_without_the_gather_ddp_sees_only_local_groups(ddp_records: Path) -> None:
    # The control: with rank-local in-batch groups the step differs from one process's.
    ranks, single = _records(ddp_records, "neighbors-local")
    grad = single["grads"]["backbone.1.weight"]
    assert not torch.allclose(ranks[0]["grads"]["backbone.1.weight"], grad, rtol=1e-3, atol=1e-5)
