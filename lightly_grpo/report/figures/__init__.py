"""The report's figures, drawn on :class:`matplotlib.figure.Figure` objects (Agg, no pyplot).

Nothing here touches matplotlib's global state, so figures can be drawn from any thread.

Examples:
    >>> from lightly_grpo.report.figures import plot_training_curves
    >>> plot_training_curves([{"epoch": 1, "train/reward": 0.5}], "/tmp/c.png").name
    'c.png'
"""

from __future__ import annotations

from lightly_grpo.report.figures.curves import curve_series, plot_training_curves
from lightly_grpo.report.figures.embedding_map import plot_embedding_map, subsample
from lightly_grpo.report.figures.per_class import plot_per_class
from lightly_grpo.report.figures.retrieval_grid import plot_retrieval_grid

__all__ = [
    "curve_series",
    "plot_embedding_map",
    "plot_per_class",
    "plot_retrieval_grid",
    "plot_training_curves",
    "subsample",
]
