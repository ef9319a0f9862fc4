"""Training curves: one small panel per logged metric against the epoch."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lightly_grpo.report.figures._common import MISS_COLOR, SPLIT_STYLE, mpl_text, save_figure
from lightly_grpo.report.inputs import as_float
from lightly_grpo.report.names import curve_display_name, curve_sort_key


def curve_series(history: Sequence[Mapping[str, float]]) -> dict[str, list[str]]:
    """Groups history keys into panels and their splits, panels in report order.

    A key without a split prefix (``"lr"``) gets the split ``"value"``.

    Examples:
        >>> curve_series([{"epoch": 1, "train/loss": 0.1, "val/accuracy": 0.5, "lr": 0.1}])
        {'accuracy': ['val'], 'loss': ['train'], 'lr': ['value']}
    """
    panels: dict[str, list[str]] = {}
    for row in history:
        for key in row:
            if key == "epoch":
                continue
            split, _, base = key.rpartition("/")
            splits = panels.setdefault(base, [])
            if (split or "value") not in splits:
                splits.append(split or "value")
    return {base: panels[base] for base in sorted(panels, key=curve_sort_key)}


def _plot_curve(ax: Axes, history: Sequence[Mapping[str, float]], base: str, split: str) -> int:
    """Draws one split of one panel; returns how many non-finite values were left out."""
    key = base if split == "value" else f"{split}/{base}"
    points = [
        (as_float(r["epoch"], f"history[{i}]['epoch']"), as_float(r[key], f"history[{i}][{key!r}]"))
        for i, r in enumerate(history)
        if key in r
    ]
    finite = [(x, y) for x, y in points if math.isfinite(y)]
    color, style = SPLIT_STYLE.get(split, ("#555555", "-"))
    xs, ys = zip(*finite, strict=True) if finite else ((), ())
    marker = "o" if len(finite) <= 30 else None
    ax.plot(xs, ys, color=color, linestyle=style, marker=marker, markersize=3, label=split)
    return len(points) - len(finite)


def plot_training_curves(history: Sequence[Mapping[str, float]], path: str | Path) -> Path:
    """Plots one small panel per logged metric against the epoch and saves a PNG.

    Train and validation values of the same metric (``train/accuracy``, ``val/accuracy``) share
    a panel. Non-finite values are left out and the panel says how many were dropped.

    Args:
        history: One row per logged point, each with an ``"epoch"`` and any metric values.
        path: Where to write the PNG.

    Returns:
        The path of the written PNG.

    Examples:
        >>> rows = [{"epoch": e, "train/reward": 0.1 * e} for e in range(5)]
        >>> plot_training_curves(rows, "/tmp/curves.png")
        PosixPath('/tmp/curves.png')
    """
    if not history:
        raise ValueError("history is empty: nothing to plot")
    for i, row in enumerate(history):
        if "epoch" not in row:
            raise ValueError(f"history row {i} has no 'epoch': {dict(row)!r}")
    panels = curve_series(history)
    if not panels:
        raise ValueError("history rows hold only 'epoch', no metric to plot")
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.0 * ncols, 2.7 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, squeeze=False)).ravel()
    for ax, (base, splits) in zip(axes, panels.items(), strict=False):
        dropped = sum(_plot_curve(ax, history, base, split) for split in splits)
        only = f" ({splits[0]})" if splits in (["val"], ["test"]) else ""
        ax.set_title(mpl_text(curve_display_name(base) + only), fontsize=11)
        ax.grid(alpha=0.3)
        if len(splits) > 1:
            ax.legend(fontsize=8, frameon=False)
        if dropped:
            ax.text(
                0.02,
                0.95,
                f"{dropped} non-finite value(s) omitted",
                color=MISS_COLOR,
                transform=ax.transAxes,
                fontsize=8,
                va="top",
            )
    for i, ax in enumerate(axes):
        if i >= len(panels):
            ax.set_visible(False)
        elif i + ncols >= len(panels):  # nothing drawn below: this panel carries the x axis
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel("epoch")
    return save_figure(fig, path)
