"""Exact kNN throughput of the index layer's chunked torch backend on one device.

Usage:
    python recipes/benchmarks/bench_gpu_knn.py --device cuda --queries 100000 --references 1000000
"""

from __future__ import annotations

import argparse
import time

import torch

from lightly_grpo.index import knn_search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--queries", type=int, default=10000)
    parser.add_argument("--references", type=int, default=100000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    generator = torch.Generator(device=device).manual_seed(0)
    queries = torch.randn(args.queries, args.dim, device=device, generator=generator)
    references = torch.randn(args.references, args.dim, device=device, generator=generator)
    queries = torch.nn.functional.normalize(queries, dim=1)
    references = torch.nn.functional.normalize(references, dim=1)
    knn_search(queries[:1000], references, args.k, backend="torch")  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    values, indices = knn_search(queries, references, args.k, backend="torch")
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = (
        torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    )
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"{label}: {args.queries} x {args.references} x {args.dim}, k={args.k}: {seconds:.2f} s, "
        f"{args.queries / seconds:,.0f} queries/s, peak GPU memory {peak:.2f} GiB, "
        f"shape {tuple(indices.shape)}"
    )


if __name__ == "__main__":
    main()
