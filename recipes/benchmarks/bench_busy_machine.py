"""Benchmark: leave-one-out kNN on a quiet machine and with one core taken by another process.

The tiled backend (``knn_search(..., backend="tiled", exclude_self=True)``, the symmetric search
of :mod:`lightly_grpo.index.tiled`) against pytorch-metric-learning's ``AccuracyCalculator``
(its ``FaissKNN``, exact faiss-cpu search) and a bare faiss-cpu ``IndexFlatIP`` search, each
(1) on the machine as it is and (2) while a competing process keeps one core busy: a pure-Python
busy loop (``--competitor python``) or a single-threaded numpy matrix product (``numpy``).
Each measurement runs in a fresh child process; the table gives the fastest of ``--repeats``
runs in seconds, the child's CPU seconds (threads that spin while waiting show up there) and
the busy/quiet slowdown. One core of C taken leaves (C - 1) / C of the machine, so a method
that loses no more than that work slows down by at most C / (C - 1) (2x on two cores).

``tiled, OMP passive`` runs the tiled backend with ``OMP_WAIT_POLICY=PASSIVE``: torch's OpenMP
threads (the tile products) then sleep as soon as a product is done instead of spinning for
the next one, which on an oversubscribed machine takes cores from the top-k threads.

The tiled backend's neighbours on the busy machine must be identical to its quiet ones (the
``identical`` column): the result never depends on the thread schedule.

Data: ``--classes`` random class centres plus Gaussian noise, L2-normalised (as in
``bench_retrieval.py``).

Usage (the reference numbers; run on an otherwise quiet machine):
    python recipes/benchmarks/bench_busy_machine.py --n 50000 --k 100 --repeats 3

Short run (while others use the machine):
    python recipes/benchmarks/bench_busy_machine.py --n 20000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_retrieval import make_data  # noqa: E402

METHODS = ("tiled", "tiled, OMP passive", "pml AccuracyCalculator (FaissKNN)", "faiss IndexFlatIP")
# Extra environment of a method's child process (read when OpenMP starts, so set before).
METHOD_ENV = {"tiled, OMP passive": {"OMP_WAIT_POLICY": "PASSIVE"}}

COMPETITORS = {
    "python": "while True:\n    pass\n",
    "numpy": (
        "import numpy as np\n"
        "a = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)\n"
        "while True:\n    a @ a\n"
    ),
}
# One thread for the numpy competitor: it must take one core, not all of them.
SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all its threads).

    Examples:
        >>> cpu_seconds() >= 0.0
        True
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(method: str, data_path: str, k: int, out_path: str) -> None:
    """Runs one leave-one-out search; prints seconds and CPU seconds as JSON, saves neighbours.

    Examples:
        >>> child("tiled", "data.npz", 100, "out.npy")  # doctest: +SKIP
        {"seconds": 1.9, "cpu_seconds": 3.6}
    """
    import torch

    data = np.load(data_path)
    x, labels = data["x"], data["labels"]
    indices: np.ndarray | None = None
    if method.startswith("tiled"):
        from lightly_grpo.index import knn_search

        xt = torch.from_numpy(x)
        start, cpu = time.perf_counter(), cpu_seconds()
        _, found = knn_search(xt, xt, k, backend="tiled", exclude_self=True)
        indices = found.numpy()
    elif method.startswith("pml"):
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
        from pytorch_metric_learning.utils.inference import FaissKNN

        calc = AccuracyCalculator(
            include=("precision_at_1",), k=k, knn_func=FaissKNN(), device=torch.device("cpu")
        )
        start, cpu = time.perf_counter(), cpu_seconds()
        calc.get_accuracy(torch.from_numpy(x), torch.from_numpy(labels))
    else:
        import faiss

        start, cpu = time.perf_counter(), cpu_seconds()
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        _, found_np = index.search(x, k + 1)
        # Drop each item itself (the last neighbour where it is missing: exact ties).
        is_self = found_np == np.arange(len(x))[:, None]
        is_self[~is_self.any(axis=1), -1] = True
        indices = found_np[~is_self].reshape(len(x), k)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    if indices is not None:
        np.save(out_path, indices)
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu}))


def start_competitor(kind: str) -> subprocess.Popen[bytes]:
    """Starts a process that keeps one core busy until killed.

    Examples:
        >>> proc = start_competitor("python")
        >>> proc.poll() is None
        True
        >>> proc.kill(); _ = proc.wait()
    """
    env = {**os.environ, **SINGLE_THREAD_ENV}
    proc = subprocess.Popen([sys.executable, "-c", COMPETITORS[kind]], env=env)
    time.sleep(1.0)  # Let it import and reach its loop.
    return proc


def measure(method: str, data_path: str, k: int, out_path: str) -> dict[str, float]:
    """Runs :func:`child` in a fresh process.

    Examples:
        >>> measure("faiss IndexFlatIP", "data.npz", 100, "out.npy")  # doctest: +SKIP
        {'seconds': 1.2, 'cpu_seconds': 2.3}
    """
    env = {**os.environ, **METHOD_ENV.get(method, {})}
    cmd = [sys.executable, __file__, "--child", method, data_path, str(k), out_path]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{method} failed (exit {done.returncode}): {done.stderr[-500:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def machine() -> str:
    """One line describing the machine and how loaded it was when the run started.

    Examples:
        >>> "CPUs" in machine()
        True
    """
    import torch

    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (
        f"{platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"load average {load} at start"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--competitor", choices=sorted(COMPETITORS), default="python")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--child", nargs=4, metavar=("METHOD", "DATA", "K", "OUT"))
    args = parser.parse_args()
    if args.child:
        method, data_path, k, out_path = args.child
        child(method, data_path, int(k), out_path)
        return
    if args.n < 2 or not 1 <= args.k < args.n or args.repeats < 1:
        raise ValueError(f"need 1 <= k < n and repeats >= 1, got n={args.n}, k={args.k}")

    print(machine())
    print(f"N={args.n}, D={args.dim}, k={args.k}, competitor: {args.competitor} busy loop")
    x, labels = make_data(args.n, args.dim, args.classes)
    best: dict[tuple[str, str], dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data_path = os.path.join(tmp, "data.npz")
        np.savez(data_path, x=x, labels=labels)
        outputs = {
            (m, c): os.path.join(tmp, f"{i}-{c}.npy")
            for i, m in enumerate(args.methods)
            for c in ("quiet", "busy")
        }
        # Quiet and busy runs alternate, so a change in the machine's load during the run (other
        # users) falls on both; the fastest repeat is the one least disturbed by them.
        for _ in range(args.repeats):
            for method in args.methods:
                for condition in ("quiet", "busy"):
                    competitor = start_competitor(args.competitor) if condition == "busy" else None
                    try:
                        result = measure(method, data_path, args.k, outputs[method, condition])
                    finally:
                        if competitor is not None:
                            competitor.kill()
                            competitor.wait()
                    key = (method, condition)
                    if key not in best or result["seconds"] < best[key]["seconds"]:
                        best[key] = result
                    print(f"  {method:36s} {condition:5s} {result['seconds']:8.2f} s", flush=True)
        same = {
            m: np.array_equal(np.load(outputs[m, "quiet"]), np.load(outputs[m, "busy"]))
            for m in args.methods
            if os.path.exists(outputs[m, "quiet"])
        }

    cores = os.cpu_count() or 1
    bound = f"{cores / (cores - 1):.2f}x" if cores > 1 else "n/a"
    print(f"\nslowdown bound for one core of {cores} taken: {bound}")
    header = f"{'method':36s} {'quiet s':>8s} {'cpu s':>7s} {'busy s':>8s} {'cpu s':>7s}"
    print(f"{header} {'slowdown':>8s}  identical")
    for method in args.methods:
        quiet, busy = best[method, "quiet"], best[method, "busy"]
        identical = "-" if method not in same else ("yes" if same[method] else "NO")
        print(
            f"{method:36s} {quiet['seconds']:8.2f} {quiet['cpu_seconds']:7.2f} "
            f"{busy['seconds']:8.2f} {busy['cpu_seconds']:7.2f} "
            f"{busy['seconds'] / quiet['seconds']:7.2f}x  {identical}"
        )


if __name__ == "__main__":
    main()
