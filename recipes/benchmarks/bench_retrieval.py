"""Benchmark: RetrievalEvaluator against pytorch-metric-learning's AccuracyCalculator.

Leave-one-out retrieval (P@1, R-precision, MAP@R) on synthetic embeddings: ``--classes`` random
class centres plus Gaussian noise, L2-normalised, so the metrics are far from 0 and 1. Every
measurement runs in its own child process, so peak memory (the child's own ``VmHWM``) does not
mix between methods. AccuracyCalculator runs with faiss-cpu and ``k="max_bin_count"``; a
watchdog kills any child above ``--memory-limit-gb`` so the machine survives (AccuracyCalculator
at 200k needs more than 24 GB), and sizes above ``--acc-max-n`` skip it with a note.

Backends: ``tiled`` (the CPU default), ``tiled-chunked`` (the tiled backend with the symmetric
leave-one-out search turned off, as for sets whose candidate buffers exceed its memory budget),
``faiss``, ``torch``.

Usage:
    python recipes/benchmarks/bench_retrieval.py --sizes 10000 50000 100000 200000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

METRICS = ("precision_at_1", "r_precision", "mean_average_precision_at_r")


def make_data(n: int, dim: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class centres + noise, L2-normalised float32, and int64 labels."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim), dtype=np.float32)
    labels = rng.integers(0, classes, size=n)
    x = centres[labels] + 1.5 * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels


def own_peak_bytes() -> int:
    """Peak RSS of this process's own address space (``VmHWM``).

    Unlike ``ru_maxrss``, which a child inherits from the (possibly large) parent it was forked
    from, this counts only what the child itself touched after ``exec``.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(method: str, data_path: str) -> None:
    """Runs one measurement and prints a JSON line.

    ``baseline:<method>`` only imports what ``<method>`` imports and builds the data: the floor
    under that method's peak memory.
    """
    import torch

    baseline = method.startswith("baseline:")
    method = method.removeprefix("baseline:")
    data = np.load(data_path)
    x, labels = data["x"], data["labels"]
    if method == "accuracy_calculator":
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    else:
        from lightly_grpo.evaluation import RetrievalEvaluator
    if baseline:
        zeros = {k: 0.0 for k in METRICS}
        print(json.dumps({"seconds": 0.0, "metrics": zeros, "peak_bytes": own_peak_bytes()}))
        return
    start = time.perf_counter()
    if method == "accuracy_calculator":
        calc = AccuracyCalculator(k="max_bin_count", include=METRICS, device=torch.device("cpu"))
        metrics = calc.get_accuracy(torch.from_numpy(x), torch.from_numpy(labels))
    else:
        backend = method.split(":", 1)[1]
        if backend == "tiled-chunked":
            # The tiled backend with its memory-lean mode forced: no symmetric search.
            from lightly_grpo.index import tiled

            tiled.DEFAULT_SYMMETRIC_MEMORY_BYTES = 0
            backend = "tiled"
        evaluator = RetrievalEvaluator(backend=backend, knn_protocols=(), nmi=False)
        metrics = evaluator.evaluate(torch.from_numpy(x), torch.from_numpy(labels)).metrics
    elapsed = time.perf_counter() - start
    values = {k: float(metrics[k]) for k in METRICS}
    print(json.dumps({"seconds": elapsed, "metrics": values, "peak_bytes": own_peak_bytes()}))


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_child(cmd: list[str], limit_bytes: int) -> tuple[int | None, int, str, str]:
    """Runs ``cmd``; returns (exit code or None if killed for memory, ru_maxrss, out, err).

    A watchdog polls the child's RSS and kills it above ``limit_bytes``. ``ru_maxrss`` includes
    the parent's RSS at fork time, so the benchmarks use the peak the child reports itself
    (:func:`own_peak_bytes`).
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        killed = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid != 0:
                break
            if not killed and _rss_bytes(proc.pid) > limit_bytes:
                proc.kill()
                killed = True
            time.sleep(0.1)
        proc.returncode = os.waitstatus_to_exitcode(status)  # Reaped here, not by Popen.
        out.seek(0)
        err.seek(0)
        code = None if killed else proc.returncode
        return code, usage.ru_maxrss * 1024, out.read(), err.read()


def measure(method: str, data_path: str, limit_bytes: int) -> dict[str, object]:
    """Runs ``child`` in a fresh process; returns seconds, peak RSS and metrics (or a note)."""
    cmd = [sys.executable, __file__, "--child", method, data_path]
    code, _, stdout, stderr = run_child(cmd, limit_bytes)
    if code is None:
        return {"note": f"killed above {limit_bytes / 2**30:.0f} GiB"}
    if code != 0:
        return {"note": f"failed (exit {code}): {stderr.strip()[-300:]}"}
    return dict(json.loads(stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000, 200_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--backends", nargs="+", default=["tiled", "faiss", "torch"])
    parser.add_argument(
        "--acc-max-n",
        type=int,
        default=100_000,
        help="skip AccuracyCalculator above this N (it ran out of 24 GB at 200k)",
    )
    parser.add_argument("--memory-limit-gb", type=float, default=16.0)
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run each measurement this often (interleaved) and keep the fastest",
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    limit = int(args.memory_limit_gb * 2**30)
    print(
        f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"dim={args.dim}, classes={args.classes}, leave-one-out"
    )
    methods = ["accuracy_calculator"] + [f"ours:{b}" for b in args.backends]
    rows = []
    tmp = tempfile.TemporaryDirectory()
    for n in args.sizes:
        # The data is made once here and loaded by every child, so its temporaries are in
        # no child's peak.
        data_path = os.path.join(tmp.name, f"data_{n}.npz")
        x, labels = make_data(n, args.dim, args.classes)
        np.savez(data_path, x=x, labels=labels)
        del x, labels
        results: dict[str, dict[str, object]] = {}
        floors = {
            m: int(measure(f"baseline:{m}", data_path, limit)["peak_bytes"])  # type: ignore[call-overload]
            for m in ("accuracy_calculator", "ours:torch")
        }
        for repeat in range(args.repeats):
            for method in methods:
                if method == "accuracy_calculator" and n > args.acc_max_n:
                    results[method] = {"note": f"skipped (N > --acc-max-n {args.acc_max_n})"}
                    continue
                if "note" in results.get(method, {}):
                    continue  # Killed or failed once: do not retry.
                r = measure(method, data_path, limit)
                print(f"N={n} {method} run {repeat + 1}: {json.dumps(r)}", flush=True)
                best = results.get(method)
                if best is None or "seconds" not in r or r["seconds"] < best["seconds"]:  # type: ignore[operator]
                    results[method] = r
        for m, r in results.items():
            if "peak_bytes" in r:
                floor = floors[m if m == "accuracy_calculator" else "ours:torch"]
                r["net_bytes"] = int(r["peak_bytes"]) - floor  # type: ignore[call-overload]
        rows.append((n, results))
        os.remove(data_path)
        print(
            f"N={n} floors (imports + data, GiB): "
            + ", ".join(f"{m}={v / 2**30:.2f}" for m, v in floors.items()),
            flush=True,
        )
    tmp.cleanup()

    def fmt(r: dict[str, object]) -> str:
        if "seconds" not in r:
            return str(r.get("note", "-"))
        peak = int(r["peak_bytes"]) / 2**30  # type: ignore[call-overload]
        net = int(r["net_bytes"]) / 2**30  # type: ignore[call-overload]
        return f"{r['seconds']:.1f} s / {peak:.2f} GiB ({net:.2f})"

    header = "| N | AccuracyCalculator (faiss-cpu) |"
    header += "".join(f" ours ({b}) | speed-up ({b}) | memory ratio ({b}) |" for b in args.backends)
    header += " max abs metric difference |"
    print()
    print("Time: the evaluation call alone (fastest of --repeats). Memory: the child's peak RSS;")
    print("in brackets, the peak above a child that only makes the same imports and data.")
    print()
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for n, results in rows:
        acc = results["accuracy_calculator"]
        line = f"| {n:,} | {fmt(acc)} |"
        diffs = []
        for b in args.backends:
            ours = results[f"ours:{b}"]
            line += f" {fmt(ours)} |"
            if "seconds" in acc and "seconds" in ours:
                line += f" {acc['seconds'] / ours['seconds']:.1f}x |"  # type: ignore[operator]
                net = int(ours["net_bytes"]) / int(acc["net_bytes"])  # type: ignore[call-overload]
                line += f" {int(ours['peak_bytes']) / int(acc['peak_bytes']):.2f} ({net:.2f}) |"  # type: ignore[call-overload]
                diffs += [abs(acc["metrics"][m] - ours["metrics"][m]) for m in METRICS]  # type: ignore[index]
            else:
                line += " - | - |"
        line += f" {max(diffs):.1e} |" if diffs else " - |"
        print(line)
    for n, results in rows:
        for method, r in results.items():
            metrics = r.get("metrics")
            if isinstance(metrics, dict):
                print(f"N={n} {method}: " + ", ".join(f"{k}={v:.6f}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
