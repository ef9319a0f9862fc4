"""What unlabeled GRPO-RM costs: its training step against a SimCLR step, and the refresh.

Side by side in one process, on the same two-view batches of Fashion-MNIST: the median time of a
GRPO-RM step with the neighbour output set (one forward of both views, the in-batch group) and of
a SimCLR step (lightly's projection head and ``NTXentLoss``), each a real Lightning training step
with its optimizer. The refresh is timed as ``OutputSetRefresh`` runs it: embed every training
image (eval transform, batched) and rebuild the neighbour table by exact kNN. Its share of an
epoch is refresh time / (steps per epoch x SimCLR step time).

    python recipes/benchmarks/bench_unlabeled_cost.py runs/simclr/simclr.ckpt --images 60000
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Subset

from lightly_grpo.backbones import backbone_output_dim, load_backbone
from lightly_grpo.data import IndexedDataset, make_loader, resolve_dataset
from lightly_grpo.data.transforms import eval_transform, simclr_transform
from lightly_grpo.losses import GRPORMPolicyLoss
from lightly_grpo.output_sets import NeighborOutputSet
from lightly_grpo.output_sets.refresh import embed_bank
from lightly_grpo.pretrain.simclr import SimCLRModule
from lightly_grpo.rewards import neighbor_reward
from lightly_grpo.stage import GRPORMStage


class StepTimer(pl.Callback):
    """Wall time of every training step (batch start to batch end)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        self.times.append(time.perf_counter() - self._start)


def time_steps(module: pl.LightningModule, loader: DataLoader[Any], steps: int) -> float:
    """Median step time after two warm-up steps."""
    timer = StepTimer()
    trainer = pl.Trainer(
        max_steps=steps + 2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(module, loader)
    return statistics.median(timer.times[2:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--images", type=int, default=60000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=28)
    args = parser.parse_args()
    torch.manual_seed(0)
    size = args.input_size
    indices = list(range(args.images))
    views = Subset(resolve_dataset("default", "train", simclr_transform(size, 1)), indices)
    plain = Subset(resolve_dataset("default", "train", eval_transform(size, 1)), indices)
    loader = make_loader(IndexedDataset(views), args.batch_size, shuffle=True, drop_last=True)

    backbone = load_backbone(args.checkpoint, "resnet18_small")
    dim = backbone_output_dim(backbone, (1, size, size))
    output_set = NeighborOutputSet(len(indices), dim, num_neighbors=20)
    stage = GRPORMStage(
        backbone, criterion=GRPORMPolicyLoss(output_set, reward=neighbor_reward(1.0, 0.5, 30.0))
    )
    started = time.perf_counter()
    bank = embed_bank(stage, plain, batch_size=512, progress=True)
    embedded = time.perf_counter()
    output_set.refresh(bank)
    refresh = time.perf_counter() - started
    grpo = time_steps(stage, loader, args.steps)

    simclr = SimCLRModule.load_from_checkpoint(
        args.checkpoint,
        map_location="cpu",
        weights_only=True,
        backbone=load_backbone(args.checkpoint, "resnet18_small"),
    )
    simclr_step = time_steps(simclr, loader, args.steps)
    epoch = len(indices) / args.batch_size * simclr_step
    # An epoch of NeighborBatchSampler makes every image an anchor once: half of each batch.
    mined_epoch = len(indices) // (args.batch_size // 2) * grpo
    print(f"images: {len(indices)}, batch {args.batch_size} image pairs, {size} px, CPU")
    print(f"SimCLR step:             {simclr_step:.3f} s")
    print(f"GRPO-RM neighbour step:  {grpo:.3f} s  ({grpo / simclr_step:.2f}x SimCLR)")
    print(
        f"refresh: {refresh:.1f} s (embedding {embedded - started:.1f} s, "
        f"kNN table {refresh - (embedded - started):.1f} s)"
    )
    print(
        f"one pass over the images (SimCLR steps): {epoch:.1f} s; refresh = {refresh / epoch:.1%}"
    )
    print(
        f"one neighbour-mined GRPO-RM epoch (every image an anchor once): {mined_epoch:.1f} s; "
        f"refresh = {refresh / mined_epoch:.1%}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
