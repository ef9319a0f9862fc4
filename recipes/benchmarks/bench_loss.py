"""Loss micro-benchmark: GRPO-RM forward+backward against cross-entropy on the same inputs.

Times, in one run on one device:
  * with the head: embeddings (B, D) -> cosine prototypes / tau -> loss, forward + backward into
    the embeddings and the prototypes, for GRPORMClassificationLoss and for F.cross_entropy on the
    very same cosine-prototype logits;
  * the loss alone: given logits (B, C), GRPORMLoss vs F.cross_entropy;
  * the same GRPO-RM surrogate written with plain autograd ops, to show what the closed-form
    backward buys.

The cases run in interleaved rounds (``--rounds``) and each reports its median, so a load change
on a shared machine hits all cases of a round alike.

Usage:
    python recipes/benchmarks/bench_loss.py [--device cuda] [--batch 512 --classes 1000 --dim 512]
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch
import torch.nn.functional as F
from torch.utils import benchmark

from lightly_grpo.losses.classification import GRPORMClassificationLoss
from lightly_grpo.losses.fused import fused_accuracy_uniformity_loss
from lightly_grpo.losses.grpo import GRPORMLoss, group_advantages
from lightly_grpo.rewards import RewardInputs, default_reward


def autograd_grpo(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """GRPO-RM (accuracy + uniformity, one inner step) as a chain of autograd ops."""
    correct = F.one_hot(labels, logits.shape[1]).bool()
    old = logits.detach()
    rewards = default_reward()(RewardInputs(correct, old, old))
    advantages = group_advantages(rewards)
    ratio = torch.exp(torch.log_softmax(logits, -1) - torch.log_softmax(old, -1))
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(0.8, 1.2) * advantages)
    return -surrogate.mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--min-run-time", type=float, default=2.0)
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved timing rounds (median reported)"
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile case")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    embeddings = torch.randn(args.batch, args.dim, device=device, requires_grad=True)
    labels = torch.randint(0, args.classes, (args.batch,), device=device)
    criterion = GRPORMClassificationLoss(args.classes, args.dim).to(device)
    prototypes = criterion.prototypes
    tau = criterion.temperature
    logits_leaf = torch.randn(args.batch, args.classes, device=device, requires_grad=True)
    grpo = GRPORMLoss()

    def ce_with_head() -> None:
        logits = F.normalize(embeddings, dim=1) @ F.normalize(prototypes.weight, dim=1).t() / tau
        F.cross_entropy(logits, labels).backward()

    def grpo_with_head() -> None:
        criterion(embeddings, labels).backward()

    fast = GRPORMClassificationLoss(args.classes, args.dim, validate=False).to(device)
    fast.load_state_dict(criterion.state_dict())
    compiled = GRPORMClassificationLoss(args.classes, args.dim, validate=False, compile_math=True)
    compiled = compiled.to(device)
    compiled.load_state_dict(criterion.state_dict())

    def grpo_no_validation() -> None:
        fast(embeddings, labels).backward()

    def grpo_compiled() -> None:
        compiled(embeddings, labels).backward()

    def autograd_with_head() -> None:
        autograd_grpo(criterion.logits(embeddings), labels).backward()

    def ce_alone() -> None:
        F.cross_entropy(logits_leaf, labels).backward()

    def grpo_alone() -> None:
        correct = F.one_hot(labels, args.classes).bool()
        old = logits_leaf.detach()
        rewards = default_reward()(RewardInputs(correct, old, old))
        grpo(logits_leaf, rewards).backward()

    correct_mask = F.one_hot(labels, args.classes).bool()

    def fused_alone() -> None:
        fused_accuracy_uniformity_loss(logits_leaf, correct_mask)[0].backward()

    def autograd_alone() -> None:
        autograd_grpo(logits_leaf, labels).backward()

    cases = {
        "with head: cross-entropy": ce_with_head,
        "with head: GRPORMClassificationLoss": grpo_with_head,
        "with head: GRPORMClassificationLoss(validate=False)": grpo_no_validation,
        "with head: GRPORMClassificationLoss(validate=False, compile_math=True)": grpo_compiled,
        "with head: GRPO-RM plain autograd": autograd_with_head,
        "loss alone: cross-entropy": ce_alone,
        "loss alone: GRPORMLoss (+ rewards)": grpo_alone,
        "loss alone: fused accuracy + uniformity": fused_alone,
        "loss alone: GRPO-RM plain autograd": autograd_alone,
    }
    if args.no_compile:
        del cases["with head: GRPORMClassificationLoss(validate=False, compile_math=True)"]
    for fn in cases.values():
        for _ in range(3):  # warm-up (allocator, cuBLAS handles, compilation)
            fn()
    # Interleaved rounds, median per case: on a shared machine a load change then hits every case
    # of a round alike instead of whichever case happened to run during it.
    rounds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            timer = benchmark.Timer(stmt="fn()", globals={"fn": fn})
            median = timer.blocked_autorange(min_run_time=args.min_run_time / args.rounds).median
            rounds[name].append(median * 1e3)
    times = {name: statistics.median(values) for name, values in rounds.items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print(
        f"batch {args.batch}, classes {args.classes}, dim {args.dim}; median forward+backward "
        f"over {args.rounds} interleaved rounds"
    )
    print("| case | ms | ratio to cross-entropy |")
    print("|---|---|---|")
    for case, ms in times.items():
        base = times[
            "with head: cross-entropy" if case.startswith("with") else "loss alone: cross-entropy"
        ]
        print(f"| {case} | {ms:.3f} | {ms / base:.2f}x |")


if __name__ == "__main__":
    main()
