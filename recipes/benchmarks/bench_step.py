"""Training-step benchmark: one GRPO-RM step against one cross-entropy step on the same backbone.

Both steps run forward, backward and an AdamW update of a ResNet-18 (small-image stem) plus
cosine class prototypes, on the same batch, in one run on one device.

Usage:
    python recipes/benchmarks/bench_step.py [--device cuda] [--batch 256] [--size 32]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from lightly_grpo.backbones import build_backbone
from lightly_grpo.losses.classification import GRPORMClassificationLoss


def _time(step, device: torch.device, iterations: int) -> float:  # type: ignore[no-untyped-def]
    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(iterations):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / iterations * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 1, args.size, args.size, device=device)
    labels = torch.randint(0, args.classes, (args.batch,), device=device)
    results = {}
    for name in ("cross-entropy", "GRPO-RM", "GRPO-RM compiled"):
        backbone = build_backbone("resnet18_small", 1).to(device)
        compiled = name.endswith("compiled")
        criterion = GRPORMClassificationLoss(args.classes, 512, compile_math=compiled).to(device)
        params = list(backbone.parameters()) + list(criterion.parameters())
        optimizer = torch.optim.AdamW(params, lr=1e-4)

        def step(
            name: str = name,
            backbone: torch.nn.Module = backbone,
            criterion: GRPORMClassificationLoss = criterion,
            optimizer: torch.optim.Optimizer = optimizer,
        ) -> None:
            embeddings = backbone(images)
            if name.startswith("GRPO-RM"):
                loss = criterion(embeddings, labels)
            else:
                loss = F.cross_entropy(criterion.logits(embeddings), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        results[name] = _time(step, device, args.iterations)
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {label}, batch {args.batch}, {args.size}x{args.size}, ResNet-18 + prototypes")
    for name, ms in results.items():
        print(f"{name:>14}: {ms:8.2f} ms/step  ({ms / results['cross-entropy']:.2f}x)")


if __name__ == "__main__":
    main()
