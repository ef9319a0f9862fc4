"""The benchmark's Markdown table and convergence plot, generated from its result files.

Each cell is the mean ± sample standard deviation over the training seeds. The best method of a
column is bold; a ▲ or ▼ marks a method that is better or worse than the cross-entropy
baseline (``ce-linear``, the paper's) by more than the spread, that is by more than the sum of
the two standard deviations.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchlib.config import BenchmarkConfig, DataRow
from benchlib.runner import PRETRAINED, RunResult
from benchlib.shifts import SHIFT_STRENGTHS
from lightly_grpo.methods import METHODS, method_spec

#: The reference every other method is marked against.
REFERENCE_METHOD = "ce-linear"
#: Columns of the main table: (metric key, header).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("classifier_accuracy", "own classifier acc."),
    ("knn_top1_dino", "kNN top-1 (k=20, T=0.07)"),
    ("knn_top1_lightly", "kNN top-1 (k=200, T=0.1)"),
    ("mean_average_precision_at_r", "MAP@R"),
    ("precision_at_1", "P@1"),
    ("recall_at_1", "Recall@1"),
    ("ncm_accuracy", "class-mean acc."),
    ("epochs_to_95", "epochs to 95% acc."),
    ("late_change", "val. change, last 20% (pts)"),
    ("train_seconds", "train s"),
)
#: Columns of the out-of-distribution table (per shift).
SHIFT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("classifier_accuracy", "acc."),
    ("knn_top1_dino", "kNN top-1"),
    ("mean_average_precision_at_r", "MAP@R"),
)
# Lower is better for these columns (the marks and the bold face follow it).
_LOWER_IS_BETTER = ("epochs_to_95", "late_change", "train_seconds")
#: A run counts as converged when its validation accuracy moves less than this (in points) over
#: the last 20% of its epochs.
CONVERGED_POINTS = 0.5


def epochs_to_fraction(curve: Sequence[float], fraction: float = 0.95) -> float:
    """The first epoch (1-based) whose accuracy reaches ``fraction`` of the final accuracy.

    Examples:
        >>> epochs_to_fraction([0.5, 0.8, 0.9, 0.91])
        3.0
        >>> math.isnan(epochs_to_fraction([]))
        True
    """
    values = [v for v in curve if not math.isnan(v)]
    if not values:
        return math.nan
    target = fraction * values[-1]
    return float(next(i + 1 for i, v in enumerate(values) if v >= target))


def late_change(curve: Sequence[float], share: float = 0.2) -> float:
    """How far (absolute, in accuracy points) the curve moves over its last ``share`` of epochs:
    ``|last - value at (1 - share) of the run|``; NaN for fewer than 2 epochs.

    Examples:
        >>> late_change([0.5, 0.7, 0.80, 0.81, 0.812])
        0.2
        >>> math.isnan(late_change([0.9]))
        True
    """
    values = [v for v in curve if not math.isnan(v)]
    if len(values) < 2:
        return math.nan
    start = min(len(values) - 2, max(0, round((1 - share) * len(values)) - 1))
    return round(abs(values[-1] - values[start]) * 100, 6)


def accuracy_curve(result: RunResult) -> list[float]:
    """The per-epoch validation accuracy of a run's own classifier, or for a method without one
    (SupCon) its validation kNN top-1 among the validation images (``val/knn_top1``)."""
    key = "val/accuracy" if any("val/accuracy" in row for row in result.history) else None
    key = key or "val/knn_top1"
    return [row[key] for row in result.history if key in row]


def run_values(result: RunResult, shift: str | None = None) -> dict[str, float]:
    """The table's values of one run: test (or shifted test) metrics plus convergence and time."""
    values = dict(result.metrics if shift is None else result.shifted.get(shift, {}))
    if shift is None:
        values["epochs_to_95"] = epochs_to_fraction(accuracy_curve(result))
        values["late_change"] = late_change(accuracy_curve(result))
        values["train_seconds"] = result.train_seconds if result.method != PRETRAINED else math.nan
    return values


@dataclass
class Cell:
    """Mean, sample std and count of one metric over seeds."""

    mean: float
    std: float
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Cell:
        finite = np.array([v for v in values if not math.isnan(v)], dtype=float)
        if finite.size == 0:
            return cls(math.nan, math.nan, 0)
        std = float(finite.std(ddof=1)) if finite.size > 1 else 0.0
        return cls(float(finite.mean()), std, int(finite.size))

    def differs_from(self, other: Cell) -> int:
        """+1 / -1 when this mean is above / below ``other``'s by more than both spreads."""
        if self.count == 0 or other.count == 0:
            return 0
        gap = self.mean - other.mean
        if abs(gap) <= self.std + other.std:
            return 0
        return 1 if gap > 0 else -1


def aggregate(
    results: Sequence[RunResult], row: str, shift: str | None = None
) -> dict[str, dict[str, Cell]]:
    """Method -> metric -> :class:`Cell` over the seeds of ``row``."""
    by_method: dict[str, list[dict[str, float]]] = {}
    for result in results:
        if result.row == row:
            by_method.setdefault(result.method, []).append(run_values(result, shift))
    table: dict[str, dict[str, Cell]] = {}
    for method, runs in by_method.items():
        keys = {key for run in runs for key in run}
        table[method] = {key: Cell.of([run.get(key, math.nan) for run in runs]) for key in keys}
    return table


def _format(cell: Cell | None, key: str) -> str:
    if cell is None or cell.count == 0:
        return "–"
    if key == "train_seconds":
        return f"{cell.mean:.0f} ± {cell.std:.0f}"
    if key in ("epochs_to_95", "late_change"):
        return f"{cell.mean:.1f} ± {cell.std:.1f}"
    return f"{cell.mean:.3f} ± {cell.std:.3f}"


def _rates(rates: float | tuple[float, float | None]) -> str:
    """``"0.0003"``, or ``"0.0003 / 0.01"`` with a tuned criterion rate."""
    if isinstance(rates, tuple):
        lr, criterion = rates
        return f"{lr:.2g}" if criterion is None else f"{lr:.2g} / {criterion:.2g}"
    return f"{rates:.2g}"


def _ordered(methods: Iterable[str]) -> list[str]:
    """The pretrained row, the registered methods in table order, then variants as given."""
    given = list(dict.fromkeys(methods))
    known = [m for m in (PRETRAINED, *METHODS) if m in given]
    return known + [m for m in given if m not in known]


def markdown_table(
    table: dict[str, dict[str, Cell]],
    columns: Sequence[tuple[str, str]],
    lrs: dict[str, float | tuple[float, float | None]] | None = None,
) -> str:
    """One Markdown table: a line per method (pretrained first), a column per metric; ``lrs``
    gives each method's tuned rate, or (rate, criterion rate)."""
    methods = _ordered(table)
    trained = [m for m in methods if m != PRETRAINED]
    best: dict[str, float] = {}
    for key, _ in columns:
        means = [table[m][key].mean for m in trained if key in table[m] and table[m][key].count]
        if means:
            best[key] = min(means) if key in _LOWER_IS_BETTER else max(means)
    header = "| method | lr | " + " | ".join(title for _, title in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 2)]
    reference = table.get(REFERENCE_METHOD, {})
    for method in methods:
        name = "pretrained backbone (no post-training)" if method == PRETRAINED else method
        lr = "–" if method == PRETRAINED or not lrs or method not in lrs else _rates(lrs[method])
        cells = []
        for key, _ in columns:
            cell = table[method].get(key)
            text = _format(cell, key)
            if cell is not None and cell.count and method != PRETRAINED:
                if key in best and math.isclose(cell.mean, best[key], rel_tol=1e-9):
                    text = f"**{text}**"
                ref = reference.get(key)
                if method != REFERENCE_METHOD and ref is not None:
                    sign = cell.differs_from(ref)
                    sign = -sign if key in _LOWER_IS_BETTER else sign
                    text += " ▲" if sign > 0 else " ▼" if sign < 0 else ""
            cells.append(text)
        lines.append(f"| {name} | {lr} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def row_description(row: DataRow, counts: list[int] | None = None) -> str:
    """One line saying what a row trains on."""
    labeled = (
        f"long-tailed (imbalance ratio {row.imbalance_ratio:g}, exponential)"
        if row.imbalance_ratio is not None
        else f"{row.label_fraction:.0%} of the labels"
    )
    pool = f" of a {row.pool_size}-image pool" if row.pool_size else ""
    size = f", {sum(counts)} labeled images (per class {counts})" if counts else ""
    return (
        f"{row.dataset}, {row.backbone} backbone (pretrained on Fashion-MNIST), {labeled}{pool}"
        f"{size}; "
        f"{row.epochs} epochs, batch {row.batch_size}"
    )


def benchmark_markdown(
    cfg: BenchmarkConfig,
    results: Sequence[RunResult],
    lrs: dict[str, float | tuple[float, float | None]],
    class_counts: dict[str, list[int]] | None = None,
) -> str:
    """The whole generated results section: one table per row, then the shifted test sets."""
    parts = [
        f"Seeds {list(cfg.seeds)} (mean ± sample std); data seed {cfg.data_seed}; every method "
        "and seed is scored on the same test images. **Bold**: best post-trained method of the "
        "column. ▲/▼: better/worse than `ce-linear` by more than the sum of both standard "
        "deviations. `lr`: the tuned learning rate (backbone; the linear probe's head), and "
        "after a slash the tuned rate of the criterion (prototypes, head, proxies) when it was "
        "tuned. "
        "`val. change, last 20%`: how far the validation accuracy of the model's own classifier "
        "(for a method without one, the kNN top-1 of the validation images among themselves) "
        f"moved over the last 20% of its epochs, in points (converged: below {CONVERGED_POINTS})."
    ]
    for row in cfg.rows:
        table = aggregate(results, row.name)
        if not table:
            continue
        counts = (class_counts or {}).get(row.name)
        parts.append(f"### {row.name}\n\n{row_description(row, counts)}\n")
        parts.append(markdown_table(table, COLUMNS, lrs))
        for shift in row.shifts:
            shifted = aggregate(results, row.name, shift)
            if any(cells for cells in shifted.values()):
                parts.append(
                    f"\n**{row.name}, test set under `{shift}`** ({SHIFT_STRENGTHS[shift]}); kNN "
                    "against the clean bank:\n"
                )
                parts.append(markdown_table(shifted, SHIFT_COLUMNS, lrs))
    return "\n\n".join(parts) + "\n"


def convergence_plot(cfg: BenchmarkConfig, results: Sequence[RunResult], path: Path) -> Path:
    """Per row, the validation accuracy of each method's own classifier per epoch (mean over
    seeds, shaded ± std), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = [row for row in cfg.rows if any(r.row == row.name for r in results)]
    # One colour per method across every panel (the legend is drawn once).
    names = [m for m in _ordered(r.method for r in results) if m != PRETRAINED]
    palette = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    colours = {name: palette(i % palette.N) for i, name in enumerate(names)}
    fig, axes = plt.subplots(1, max(1, len(rows)), figsize=(4.2 * max(1, len(rows)), 3.4))
    for ax, row in zip(np.atleast_1d(axes), rows, strict=False):
        for method in _ordered(r.method for r in results if r.row == row.name):
            curves = [
                accuracy_curve(r) for r in results if r.row == row.name and r.method == method
            ]
            curves = [c for c in curves if c]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            values = np.array([c[:length] for c in curves])
            epochs = np.arange(1, length + 1)
            mean, std = values.mean(0), values.std(0)
            style = "-" if method_spec(method).is_grpo else "--"
            colour = colours[method]
            ax.plot(epochs, mean, style, marker="o", markersize=3, label=method, color=colour)
            ax.fill_between(epochs, mean - std, mean + std, alpha=0.15, color=colour)
        ax.set_title(row.name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
    # The legend of every panel together, each method once.
    found: dict[str, Any] = {}
    for ax in np.atleast_1d(axes):
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            found.setdefault(label, handle)
    handles, labels = list(found.values()), list(found)
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = [
    "COLUMNS",
    "Cell",
    "REFERENCE_METHOD",
    "accuracy_curve",
    "aggregate",
    "benchmark_markdown",
    "convergence_plot",
    "epochs_to_fraction",
    "markdown_table",
    "run_values",
]
