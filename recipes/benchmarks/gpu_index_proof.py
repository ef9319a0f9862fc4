"""Proof that the GPU search backends agree with the CPU, and how close they run to the GEMM floor.

Two parts, on normalised clustered embeddings:

1. Agreement (default 20k queries x 200k references x 128, k=20): every GPU backend (FAISS GPU
   through ``knn_search``, ``faiss_gpu_index`` in its three modes, the torch backend on CUDA)
   against the CPU search (``knn_search`` with FAISS CPU, else torch). Rankings of near-equal
   scores depend on rounding, so the check is: the sorted similarity values agree within
   ``--tol`` at every rank, and every neighbour one backend returns and the other does not
   scores (in float64) within ``--tol`` of the row's k-th similarity, i.e. it is a tie or
   near-tie at the k-th place, not a wrong neighbour.
2. Throughput (default 100k queries x 1M references x 128, k=20): seconds and queries/s of each
   backend, and their ratio to the matrix-product floor: ``torch.mm`` of the same sizes in fp32
   and bf16, chunked, no top-k (the least any exact search must do).

On a machine without CUDA (``--device cpu``) the same code compares and times the CPU backends,
so the script can be tested anywhere (``QUICK=1 bash recipes/benchmarks/gpu_index_proof.sh``).
Writes ``results.json`` and ``results.md`` to ``--out``.

Usage:
    python recipes/benchmarks/gpu_index_proof.py --out /tmp/gpu_index_proof
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from benchlib.multi_gpu import faiss_gpu_index, search_faiss_index
from lightly_grpo.index import faiss, faiss_num_gpus, knn_search, tiled_available

Search = Callable[[Tensor, Tensor, int], tuple[Tensor, Tensor]]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gpu_name() -> str:
    """The GPU name as nvidia-smi reports it, or why there is none."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"no nvidia-smi ({type(error).__name__})"
    return out.stdout.strip().replace("\n", "; ") or f"nvidia-smi failed: {out.stderr.strip()}"


def make_data(n: int, dim: int, seed: int, device: torch.device) -> Tensor:
    """Normalised points around 1000 random centres (neighbourhoods like real embeddings)."""
    g = torch.Generator(device=device).manual_seed(seed)
    centres = torch.randn(1000, dim, device=device, generator=g)
    labels = torch.randint(0, 1000, (n,), device=device, generator=g)
    x = centres[labels] + 1.5 * torch.randn(n, dim, device=device, generator=g)
    return F.normalize(x, dim=1)


def backends(device: torch.device, num_references: int) -> dict[str, Search]:
    """The searches to check on ``device``: name -> search(queries, references, k)."""
    found: dict[str, Search] = {}
    found[f"knn_search torch ({device.type})"] = lambda q, r, k: knn_search(
        q, r, k, backend="torch"
    )
    if device.type == "cuda":
        if faiss_num_gpus() > 0:
            found["knn_search faiss-gpu"] = lambda q, r, k: knn_search(q, r, k, backend="faiss-gpu")
            for mode in ("single", "replicate", "shard"):
                found[f"faiss_gpu_index {mode}"] = _index_search(mode)
    else:
        if faiss is not None:
            found["knn_search faiss (cpu)"] = lambda q, r, k: knn_search(q, r, k, backend="faiss")
        if tiled_available():
            found["knn_search tiled (cpu)"] = lambda q, r, k: knn_search(q, r, k, backend="tiled")
    return found


def _index_search(mode: str) -> Search:
    def search(q: Tensor, r: Tensor, k: int) -> tuple[Tensor, Tensor]:
        index = faiss_gpu_index(r, mode=mode)  # type: ignore[arg-type]
        return search_faiss_index(index, q, k)

    return search


def compare(
    q: Tensor, r: Tensor, ref: tuple[Tensor, Tensor], other: tuple[Tensor, Tensor], tol: float
) -> dict[str, Any]:
    """Agreement of two (values, indices) results of the same exact search."""
    rv, ri = (t.cpu() for t in ref)
    ov, oi = (t.cpu() for t in other)
    max_value_diff = float((rv - ov).abs().max())
    same_set = (ri.sort(dim=1).values == oi.sort(dim=1).values).all(dim=1)
    rows = (~same_set).nonzero().flatten()
    unexplained = 0
    worst_gap = 0.0
    if len(rows) > 0:
        qd, rd = q.cpu().double(), r.cpu().double()
        for row in rows.tolist():
            kth = min(float(rv[row, -1]), float(ov[row, -1]))
            differing = set(ri[row].tolist()) ^ set(oi[row].tolist())
            sims = rd[sorted(differing)] @ qd[row]
            # A neighbour only one side returned must tie (within tol) with the k-th value.
            gap = float((kth - sims).max())
            worst_gap = max(worst_gap, gap)
            unexplained += int((sims < kth - tol).sum())
    return {
        "max_value_diff": max_value_diff,
        "rows_with_different_sets": len(rows),
        "rows": len(ri),
        "worst_boundary_gap": worst_gap,
        "unexplained_neighbours": unexplained,
        "ok": max_value_diff <= tol and unexplained == 0,
    }


def matmul_floor(q: Tensor, r: Tensor, dtype: torch.dtype, chunk: int) -> float:
    """Seconds for all chunked ``q @ r.T`` products in ``dtype``, into a reused buffer."""
    qc, rc = q.to(dtype), r.to(dtype)
    out = torch.empty(min(chunk, len(q)), len(r), dtype=dtype, device=q.device)
    torch.mm(qc[: len(out)], rc.T, out=out)  # warm-up (cuBLAS handles, kernel choice)
    sync(q.device)
    started = time.perf_counter()
    for start in range(0, len(q), chunk):
        block = qc[start : start + chunk]
        torch.mm(block, rc.T, out=out[: len(block)])
    sync(q.device)
    return time.perf_counter() - started


def timed(search: Search, q: Tensor, r: Tensor, k: int) -> tuple[float, tuple[Tensor, Tensor]]:
    search(q[: min(len(q), 1000)], r, k)  # warm-up (and GPU index construction paths)
    sync(q.device)
    started = time.perf_counter()
    result = search(q, r, k)
    sync(q.device)
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/gpu_index_proof"))
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--check-queries", type=int, default=20_000)
    parser.add_argument("--check-references", type=int, default=200_000)
    parser.add_argument("--time-queries", type=int, default=100_000)
    parser.add_argument("--time-references", type=int, default=1_000_000)
    parser.add_argument("--floor-chunk", type=int, default=2048, help="queries per mm in floor")
    parser.add_argument("--tol", type=float, default=1e-4)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    results: dict[str, Any] = {
        "nvidia_smi": gpu_name(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "faiss": getattr(faiss, "__version__", None),
        "faiss_num_gpus": faiss_num_gpus(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
    }
    print(json.dumps(results, indent=1), flush=True)
    found = backends(device, args.check_references)
    if device.type == "cuda" and faiss_num_gpus() == 0:
        print("FAISS has no GPU here: checking and timing the torch CUDA backend only", flush=True)

    # 1. Agreement with the CPU search.
    x = make_data(args.check_queries + args.check_references, args.dim, 0, device)
    q, r = x[: args.check_queries], x[args.check_queries :]
    cpu_backend = "faiss" if faiss is not None else "torch"
    started = time.perf_counter()
    reference = knn_search(q.cpu(), r.cpu(), args.k, backend=cpu_backend)
    cpu_s = time.perf_counter() - started
    print(f"\nCPU reference: knn_search backend={cpu_backend}, {cpu_s:.1f} s", flush=True)
    agreement: dict[str, Any] = {}
    for name, search in found.items():
        if device.type == "cpu" and name == f"knn_search {cpu_backend} (cpu)":
            continue  # the reference itself
        agreement[name] = compare(q, r, reference, search(q, r, args.k), args.tol)
        print(f"{name}: {agreement[name]}", flush=True)
    results["agreement"] = {
        "shape": [args.check_queries, args.check_references, args.dim],
        "k": args.k,
        "tol": args.tol,
        "cpu_reference": cpu_backend,
        "cpu_seconds": cpu_s,
        "backends": agreement,
    }
    del x, q, r, reference

    # 2. Throughput against the matrix-product floor.
    x = make_data(args.time_queries + args.time_references, args.dim, 1, device)
    q, r = x[: args.time_queries], x[args.time_queries :]
    floors = {}
    for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        floors[label] = matmul_floor(q, r, dtype, args.floor_chunk)
        print(f"floor torch.mm {label}: {floors[label]:.3f} s", flush=True)
    timings: dict[str, Any] = {}
    outputs: dict[str, tuple[Tensor, Tensor]] = {}
    for name, search in found.items():
        if name.startswith("faiss_gpu_index") and name != "faiss_gpu_index single":
            if not (name.endswith("replicate") and faiss_num_gpus() > 1):
                continue  # one GPU: replicas/shards of one only add overhead to "single"
        seconds, outputs[name] = timed(search, q, r, args.k)
        timings[name] = {
            "seconds": seconds,
            "queries_per_s": args.time_queries / seconds,
            "x_fp32_floor": seconds / floors["fp32"],
            "x_bf16_floor": seconds / floors["bf16"],
        }
        print(f"{name}: {timings[name]}", flush=True)
    names = list(outputs)
    cross = {}
    if len(names) > 1:
        # The big run's results should agree too (same check, first backend as reference).
        for name in names[1:]:
            cross[f"{name} vs {names[0]}"] = compare(
                q, r, outputs[names[0]], outputs[name], args.tol
            )
            print(f"{name} vs {names[0]}: {cross[f'{name} vs {names[0]}']}", flush=True)
    results["throughput"] = {
        "shape": [args.time_queries, args.time_references, args.dim],
        "k": args.k,
        "floor_seconds": floors,
        "floor_chunk": args.floor_chunk,
        "backends": timings,
        "agreement": cross,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    lines = [
        f"# GPU index proof: {results['nvidia_smi']}",
        "",
        f"Agreement, {args.check_queries} x {args.check_references} x {args.dim}, k={args.k}, "
        f"against CPU `{cpu_backend}` (tol {args.tol}):",
        "",
        "| backend | max value diff | rows with other set | unexplained | ok |",
        "|---|---:|---:|---:|---|",
    ]
    for name, a in agreement.items():
        lines.append(
            f"| {name} | {a['max_value_diff']:.2e} | {a['rows_with_different_sets']} | "
            f"{a['unexplained_neighbours']} | {a['ok']} |"
        )
    lines += [
        "",
        f"Throughput, {args.time_queries} x {args.time_references} x {args.dim}, k={args.k}; "
        f"floor: torch.mm fp32 {floors['fp32']:.3f} s, bf16 {floors['bf16']:.3f} s:",
        "",
        "(`faiss_gpu_index` rows include building the GPU index from the CUDA references and "
        "the queries' trip through host memory; x floor = seconds / floor seconds.)",
        "",
        "| backend | seconds | queries/s | x fp32 floor | x bf16 floor |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, t in timings.items():
        lines.append(
            f"| {name} | {t['seconds']:.3f} | {t['queries_per_s']:,.0f} | "
            f"{t['x_fp32_floor']:.2f} | {t['x_bf16_floor']:.2f} |"
        )
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
    ok = all(a["ok"] for a in agreement.values()) and all(a["ok"] for a in cross.values())
    print(f"\nALL AGREE: {ok}")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
