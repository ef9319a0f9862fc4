"""Recall and speed of the approximate IVF search against the exact search.

Exact neighbours come from ``knn_search`` (FAISS CPU backend); the IVF index
(``build_ivf_index``) is built once per ``nlist`` and searched for every ``nprobe``. Prints a
markdown table: build time, search time, queries/s and recall@k against the exact neighbours.

Data: an embeddings file (``.pt`` tensor / dict with an ``"embeddings"`` entry, or ``.npy``;
the last ``--queries`` rows become the queries) or, by default, a clustered synthetic set
(``benchlib.synthetic.clustered``, exact unit vectors of dimension ``--dim``).

Usage:
    python recipes/benchmarks/bench_ivf_recall.py                       # 100k x 128, 10k queries
    python recipes/benchmarks/bench_ivf_recall.py --embeddings emb.npy --nlist 256 1024
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchlib.approximate import build_ivf_index, ivf_knn_search, recall_at_k
from benchlib.synthetic import clustered
from lightly_grpo.index import faiss, knn_search


def load_embeddings(path: Path) -> torch.Tensor:
    """An (N, D) float32 tensor from a .npy or .pt file."""
    if path.suffix == ".npy":
        x = torch.from_numpy(np.load(path))
    elif path.suffix == ".pt":
        obj = torch.load(path, map_location="cpu", weights_only=True)
        x = obj["embeddings"] if isinstance(obj, dict) else obj
    else:
        raise ValueError(f"--embeddings must be a .npy or .pt file, got {path}")
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        raise ValueError(f"{path} must hold a 2-D array (items, dim), got {type(x).__name__}")
    return x.float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--embeddings", type=Path, default=None)
    parser.add_argument("--references", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=128, help="synthetic dimension (>= 5)")
    parser.add_argument("--classes", type=int, default=1000, help="synthetic clusters")
    parser.add_argument("--noise", type=float, default=1.5, help="synthetic spread per cluster")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--nlist", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if faiss is None:
        raise SystemExit("this benchmark needs FAISS (the 'faiss-cpu' extra)")

    started = time.perf_counter()
    if args.embeddings is not None:
        x = load_embeddings(args.embeddings)
        if len(x) <= args.queries:
            raise SystemExit(f"{args.embeddings} has {len(x)} rows, need more than --queries")
        data = f"{args.embeddings} {tuple(x.shape)}"
    else:
        # Queries and references share the same cluster centres (one draw, then split).
        x, _ = clustered(
            args.references + args.queries, args.dim - 4, args.classes, args.noise, args.seed
        )
        data = f"clustered(classes={args.classes}, noise={args.noise}, seed={args.seed})"
    x = F.normalize(x, dim=1)
    queries, references = x[-args.queries :], x[: -args.queries]
    print(
        f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.get_num_threads()} threads, faiss {faiss.__version__} "
        f"({faiss.omp_get_max_threads()} OpenMP threads)"
    )
    print(
        f"# data: {data}; {len(references)} references x {len(queries)} queries x "
        f"{x.shape[1]}, k={args.k} (prepared in {time.perf_counter() - started:.1f} s)"
    )

    t0 = time.perf_counter()
    _, exact = knn_search(queries, references, args.k, backend="faiss")
    exact_s = time.perf_counter() - t0
    print()
    print("| search | nlist | nprobe | build s | search s | queries/s | recall@k |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(
        f"| exact (knn_search, faiss-cpu) | - | - | - | {exact_s:.2f} | "
        f"{len(queries) / exact_s:,.0f} | 1.0000 |"
    )
    for nlist in args.nlist:
        t0 = time.perf_counter()
        ivf = build_ivf_index(references, nlist, seed=args.seed)
        build_s = time.perf_counter() - t0
        for nprobe in args.nprobe:
            if nprobe > nlist:
                continue
            t0 = time.perf_counter()
            _, approx = ivf_knn_search(queries, ivf, args.k, nprobe)
            search_s = time.perf_counter() - t0
            recall = recall_at_k(approx, exact)
            print(
                f"| IVF-Flat | {nlist} | {nprobe} | {build_s:.2f} | {search_s:.2f} | "
                f"{len(queries) / search_s:,.0f} | {recall:.4f} |",
                flush=True,
            )
    print(f"\n# total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
