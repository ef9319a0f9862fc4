"""Benchmark: the neighbour loss step against the size of the neighbour table.

A :class:`NeighborOutputSet` step reads only the table rows of the batch's images, so its cost
should not grow with the number of training images N. Until this change every step also checked
that the whole table was filled (``(neighbors[:, 0] >= 0).all()``): O(N) work per step on the
CPU and a device synchronisation per step on a GPU. The check now runs until it passes once
(and again after a state dict is loaded).

Side by side in one process: ``GRPORMPolicyLoss(NeighborOutputSet)`` forward and backward on a
batch of B images x 2 views, as shipped and with the per-step scan put back
(``PerStepScan``), for each N. Median milliseconds per step over ``--steps`` steps.

Usage:
    python recipes/benchmarks/bench_neighbor_step.py                  # N = 10k, 100k, 1M
    python recipes/benchmarks/bench_neighbor_step.py --items 100000 --steps 20
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from lightly_grpo.losses.policy import GRPORMPolicyLoss
from lightly_grpo.output_sets import NeighborOutputSet


class PerStepScan(NeighborOutputSet):
    """The previous behaviour: the whole table is scanned on every step."""

    @property
    def initialized(self) -> bool:
        return bool((self.neighbors[:, 0] >= 0).all())


def _loss(cls: type[NeighborOutputSet], items: int, k: int, dim: int) -> GRPORMPolicyLoss:
    output_set = cls(items, dim, num_neighbors=k)
    offsets = torch.arange(1, k + 1)
    # A filled table (an exact kNN over N embeddings is not what is measured here).
    output_set.neighbors.copy_((torch.arange(items)[:, None] + offsets[None, :]) % items)
    return GRPORMPolicyLoss(output_set, temperature=0.2)


def _median_ms(loss: GRPORMPolicyLoss, batch: int, dim: int, steps: int) -> float:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2 * batch, dim, generator=g, requires_grad=True)
    items = torch.randperm(loss.output_set.num_items, generator=g)[:batch].repeat(2)
    times = []
    for step in range(steps + 3):
        started = time.perf_counter()
        loss(z, None, items=items).backward()
        if step >= 3:  # warm-up
            times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--batch", type=int, default=256, help="images (x 2 views)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, batch {args.batch} x 2 views, D = {args.dim}, "
        f"k = {args.k}"
    )
    print("| N | table (MB) | per-step scan (ms/step) | as shipped (ms/step) | ratio |")
    print("|---|---|---|---|---|")
    for items in args.items:
        # Interleaved, so both see the same machine state.
        old = new = float("inf")
        for _ in range(2):
            old = min(
                old,
                _median_ms(
                    _loss(PerStepScan, items, args.k, args.dim), args.batch, args.dim, args.steps
                ),
            )
            new = min(
                new,
                _median_ms(
                    _loss(NeighborOutputSet, items, args.k, args.dim),
                    args.batch,
                    args.dim,
                    args.steps,
                ),
            )
        mb = 8 * items * args.k / 1e6
        print(f"| {items:,} | {mb:.0f} | {old:.1f} | {new:.1f} | {old / new:.2f}x |")


if __name__ == "__main__":
    main()
