"""Plots and the human-readable run report (``report.html``, ``report.md``, ``metrics.json``).

The package is split by concern:

- :mod:`~lightly_grpo.report.names`: display names, table order, which direction is better.
- :mod:`~lightly_grpo.report.figures`: training curves, embedding maps, retrieval grids and
  per-class bars, drawn on :class:`matplotlib.figure.Figure` objects (no pyplot global state).
- :mod:`~lightly_grpo.report.tables`: metric and per-class tables, deltas, the summary sentence.
- :mod:`~lightly_grpo.report.html` and :mod:`~lightly_grpo.report.markdown`: the two documents.
- :mod:`~lightly_grpo.report.run_report`: :func:`write_report`, which writes a run folder.

Examples:
    >>> from lightly_grpo.report import write_report
    >>> write_report("/tmp/run", title="demo", metrics={"a": {"precision_at_1": 0.8}}).name
    'report.html'
"""

from __future__ import annotations

from lightly_grpo.report.figures import (
    plot_embedding_map,
    plot_per_class,
    plot_retrieval_grid,
    plot_training_curves,
)
from lightly_grpo.report.formatting import ClassNames, PerClass
from lightly_grpo.report.names import HEADLINE_METRICS, higher_is_better, metric_display_name
from lightly_grpo.report.run_report import write_report
from lightly_grpo.report.tables import summary_sentence

__all__ = [
    "HEADLINE_METRICS",
    "ClassNames",
    "PerClass",
    "higher_is_better",
    "metric_display_name",
    "plot_embedding_map",
    "plot_per_class",
    "plot_retrieval_grid",
    "plot_training_curves",
    "summary_sentence",
    "write_report",
]
