"""A quality benchmark of GRPO-RM against the baselines a user would pick instead.

Methods (:mod:`lightly_grpo.methods`) differ in their objective only; rows
(:class:`DataRow`) say which labeled images train and from which pretrained backbone; every
method and seed is scored on the same fixed test images, with learning rates tuned per method on
held-out validation images of the train split. ``recipes/benchmarks/bench_quality.py`` is the
command line.

The rest of this package is the benchmarks' lab code, outside the product: out-of-distribution
test shifts (:mod:`benchlib.shifts`), long-tailed subsets (:mod:`benchlib.long_tail`), the IVF
index (:mod:`benchlib.approximate`), FAISS on several GPUs (:mod:`benchlib.multi_gpu`) and
synthetic embeddings with exact float32 scores (:mod:`benchlib.synthetic`).

Examples:
    >>> from benchlib import CPU_PRESET, run_benchmark
    >>> cfg = CPU_PRESET.select(rows=["digits"], methods=["ce-linear"], seeds=[0])
    >>> table = run_benchmark(cfg, "runs/bench")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

from benchlib.config import (
    CPU_EXTRA_PRESET,
    CPU_PRESET,
    GPU_PRESET,
    PRESETS,
    BenchmarkConfig,
    DataRow,
    PretrainSpec,
)
from benchlib.data import RowData, row_data
from benchlib.runner import PRETRAINED, Benchmark, RunResult, result_path
from benchlib.table import benchmark_markdown, convergence_plot


def run_benchmark(
    cfg: BenchmarkConfig,
    out_dir: str | os.PathLike[str],
    checkpoints: dict[str, str] | None = None,
    accelerator: str = "auto",
) -> Path:
    """Runs (or resumes) a benchmark and writes ``results.md`` and ``convergence.png``.

    Returns:
        The path of ``results.md``.
    """
    bench = Benchmark(cfg, out_dir, checkpoints, accelerator)
    results = bench.run_all()
    lrs: dict[str, float | tuple[float, float | None]] = {
        result.method: (result.lr, result.lr_criterion) for result in results if result.lr > 0
    }
    counts = {row.name: bench.data(row).class_counts for row in cfg.rows}
    out = Path(out_dir)
    plot = convergence_plot(cfg, results, out / "convergence.png")
    text = benchmark_markdown(cfg, results, lrs, counts)
    text += f"\n![Validation accuracy per epoch]({plot.name})\n"
    path = out / "results.md"
    path.write_text(text)
    return path


__all__ = [
    "CPU_EXTRA_PRESET",
    "CPU_PRESET",
    "GPU_PRESET",
    "PRESETS",
    "PRETRAINED",
    "Benchmark",
    "BenchmarkConfig",
    "DataRow",
    "PretrainSpec",
    "RowData",
    "RunResult",
    "benchmark_markdown",
    "convergence_plot",
    "result_path",
    "row_data",
    "run_benchmark",
]
