"""Benchmark: leave-one-out kNN graph (k=20) over 60,000 x 512 embeddings.

Build + search with FAISS CPU (``IndexFlatIP``), our index layer (``knn_search`` with the tiled,
torch and faiss backends, ``exclude_self=True``) and scikit-learn's ``NearestNeighbors`` (brute
force, Euclidean on the L2-normalised vectors, which ranks like cosine). Each method runs in its
own child process and reports its own peak memory (``VmHWM``); the neighbour lists are compared
against FAISS's.

The embeddings: Fashion-MNIST's 60,000 training images projected to 512 dimensions by a fixed
Gaussian random matrix and L2-normalised (``--data random`` uses Gaussian vectors instead).

Usage:
    python recipes/benchmarks/bench_knn_graph.py [--n 60000] [--dim 512] [--k 20] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_retrieval import own_peak_bytes, run_child  # noqa: E402

METHODS = (
    "faiss IndexFlatIP",
    "ours (tiled)",
    "ours (torch)",
    "ours (faiss)",
    "sklearn NearestNeighbors",
)


def make_embeddings(n: int, dim: int, data: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    if data == "fashion":
        from lightly_grpo.data import load_fashion_mnist

        images, _ = load_fashion_mnist(split="train")
        if n > len(images):
            raise ValueError(f"--n {n} exceeds the {len(images)} Fashion-MNIST training images")
        pixels = images[:n].reshape(n, -1).astype(np.float32) / 255.0
        projection = rng.standard_normal((pixels.shape[1], dim)).astype(np.float32)
        x = pixels @ projection
    else:
        x = rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x, dtype=np.float32)


def child(method: str, k: int, data_path: str, out_path: str) -> None:
    baseline = method.startswith("baseline:")
    method = method.removeprefix("baseline:")
    x = np.load(data_path)
    n, dim = x.shape
    if method == "faiss IndexFlatIP":
        import faiss
    elif method.startswith("ours"):
        import torch

        from lightly_grpo.index import knn_search
    else:
        from sklearn.neighbors import NearestNeighbors
    if baseline:
        print(json.dumps({"seconds": 0.0, "peak_bytes": own_peak_bytes()}))
        return
    start = time.perf_counter()
    if method == "faiss IndexFlatIP":
        index = faiss.IndexFlatIP(dim)
        index.add(x)
        _, found = index.search(x, k + 1)
        # Drop each item itself (the "drop the last" rule where it is missing).
        is_self = found == np.arange(n)[:, None]
        is_self[~is_self.any(axis=1), -1] = True
        neighbors = found[~is_self].reshape(n, k)
    elif method.startswith("ours"):
        backend = method.removeprefix("ours (").removesuffix(")")
        _, idx = knn_search(
            torch.from_numpy(x), torch.from_numpy(x), k, backend=backend, exclude_self=True
        )
        neighbors = idx.numpy()
    else:
        nn = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="euclidean").fit(x)
        neighbors = nn.kneighbors(return_distance=False)  # No query: excludes each point itself.
    elapsed = time.perf_counter() - start
    np.save(out_path, neighbors)
    print(json.dumps({"seconds": elapsed, "peak_bytes": own_peak_bytes()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=60_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--data", choices=("fashion", "random"), default="fashion")
    parser.add_argument("--memory-limit-gb", type=float, default=16.0)
    parser.add_argument(
        "--repeats", type=int, default=1, help="interleaved runs per method; the fastest is kept"
    )
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, k, data_path, out_path = args.child
        child(method, int(k), data_path, out_path)
        return

    limit = int(args.memory_limit_gb * 2**30)
    print(f"# {os.cpu_count()} CPUs; n={args.n}, dim={args.dim}, k={args.k}, data={args.data}")
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # Made once here and loaded by each child, so its temporaries are in no child's peak.
        data_path = os.path.join(tmp, "embeddings.npy")
        np.save(data_path, make_embeddings(args.n, args.dim, args.data))
        for repeat in range(args.repeats):
            for number, method in enumerate(METHODS):
                out_path = os.path.join(tmp, f"{number}.npy")
                floor_cmd = [sys.executable, __file__, "--child", f"baseline:{method}"]
                floor_cmd += [str(args.k), data_path, out_path]
                _, _, floor_out, _ = run_child(floor_cmd, limit)
                floor = json.loads(floor_out.strip().splitlines()[-1])["peak_bytes"]
                cmd = [sys.executable, __file__, "--child", method, str(args.k), data_path]
                code, _, stdout, stderr = run_child(cmd + [out_path], limit)
                if code != 0:
                    r: dict[str, object] = {"note": f"failed (exit {code}): {stderr[-300:]}"}
                else:
                    out = json.loads(stdout.strip().splitlines()[-1])
                    peak = int(out["peak_bytes"])
                    r = {"seconds": out["seconds"], "peak": peak, "net": peak - floor}
                    r["neighbors"] = np.load(out_path)
                best = results.get(method)
                if (
                    best is None
                    or "seconds" not in best
                    or (
                        "seconds" in r and r["seconds"] < best["seconds"]  # type: ignore[operator]
                    )
                ):
                    results[method] = r
                shown = {k: v for k, v in r.items() if k != "neighbors"}
                print(f"{method} run {repeat + 1}: {shown}", flush=True)

    reference = results[METHODS[0]].get("neighbors")
    print()
    print("| method | build + search | peak memory (above imports + data) | overlap with FAISS |")
    print("|---|---|---|---|")
    for method, r in results.items():
        if "seconds" not in r:
            print(f"| {method} | {r['note']} | - | - |")
            continue
        agree = "-"
        if isinstance(reference, np.ndarray):
            found = r["neighbors"]
            assert isinstance(found, np.ndarray)
            same = [
                len(set(a) & set(b)) / args.k
                for a, b in zip(found.tolist(), reference.tolist(), strict=True)
            ]
            agree = f"{np.mean(same):.5f}"
        peak = int(r["peak"]) / 2**30  # type: ignore[call-overload]
        net = int(r["net"]) / 2**30  # type: ignore[call-overload]
        print(f"| {method} | {r['seconds']:.1f} s | {peak:.2f} GiB ({net:.2f}) | {agree} |")


if __name__ == "__main__":
    main()
