"""Grouped bar charts of a per-class metric: a group per class, a bar per model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lightly_grpo.report.figures._common import categorical_cmap, mpl_text, save_figure
from lightly_grpo.report.formatting import ClassNames, PerClass, short_label
from lightly_grpo.report.names import metric_display_name

# Classes per row of bars; more classes wrap onto further rows so that their names stay legible.
_CLASSES_PER_ROW = 25


def plot_per_class(
    per_class: PerClass,
    path: str | Path,
    *,
    metric: str,
    class_names: ClassNames = None,
) -> Path:
    """Draws a grouped bar chart of one per-class metric: a group per class, a bar per model.

    Args:
        per_class: Model name -> metric name -> class -> value.
        path: Where to write the PNG.
        metric: Which metric to draw; models without it are skipped.
        class_names: Names indexed by label (a sequence or a mapping); labels otherwise.

    Returns:
        The path of the written PNG.

    Examples:
        >>> data = {"a": {"precision_at_1": {0: 0.9, 1: 0.7}}, "b": {"precision_at_1": {0: 0.95}}}
        >>> plot_per_class(data, "/tmp/pc.png", metric="precision_at_1")
        PosixPath('/tmp/pc.png')
    """
    models = [m for m, by_metric in per_class.items() if metric in by_metric]
    if not models:
        raise ValueError(f"no model in per_class has metric {metric!r}; models: {list(per_class)}")
    classes = sorted({int(c) for m in models for c in per_class[m][metric]})
    rows = [classes[i : i + _CLASSES_PER_ROW] for i in range(0, len(classes), _CLASSES_PER_ROW)]
    per_row = len(rows[0])
    width = min(13.0, max(6.0, 0.25 * per_row * (len(models) + 1)))
    fig = Figure(figsize=(width, 3.4 * len(rows)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(rows), 1, squeeze=False)).ravel()
    every = [v for m in models for v in per_class[m][metric].values()]
    for ax, row in zip(axes, rows, strict=True):
        _bar_group(ax, per_class, metric, models, row, class_names)
        ax.set_xlim(-0.6, per_row - 0.4)
        if 0 <= min(every) and max(every) <= 1:  # fractions: a fixed 0..1 axis compares fairly
            ax.set_ylim(0, 1.02)
    axes[0].legend(fontsize=9, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, path)


def _bar_group(
    ax: Axes,
    per_class: PerClass,
    metric: str,
    models: Sequence[str],
    classes: Sequence[int],
    class_names: ClassNames,
) -> None:
    x = np.arange(len(classes))
    width = 0.8 / len(models)
    cmap = categorical_cmap(len(models))
    for i, model in enumerate(models):
        values = [per_class[model][metric].get(c, np.nan) for c in classes]
        offset = (i - (len(models) - 1) / 2) * width
        ax.bar(x + offset, values, width, color=cmap(i), label=mpl_text(model))
    names = [mpl_text(short_label(c, class_names)) for c in classes]
    ax.set_xticks(x, names, rotation=30 if len(classes) <= 12 else 90, ha="right", fontsize=9)
    ax.tick_params(axis="x", length=0)
    ax.set_ylabel(mpl_text(metric_display_name(metric)))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
