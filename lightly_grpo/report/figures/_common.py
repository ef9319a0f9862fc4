"""Colours and small helpers shared by the report's figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

# Line colour and style of a training curve by split.
SPLIT_STYLE = {"train": ("#1f77b4", "-"), "val": ("#d62728", "--")}
QUERY_COLOR = "#1f5fbf"
HIT_COLOR = "#1a9641"
MISS_COLOR = "#d7191c"


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Writes a figure as PNG (white background, tight box), creating missing folders.

    Examples:
        >>> save_figure(Figure(figsize=(1, 1)), "/tmp/empty.png")
        PosixPath('/tmp/empty.png')
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, bbox_inches="tight", facecolor="white")
    return out


def categorical_cmap(n: int) -> Any:
    """A colormap with at least ``n`` distinguishable colours (continuous beyond 20).

    Examples:
        >>> categorical_cmap(3).name, categorical_cmap(15).name
        ('tab10', 'tab20')
    """
    from matplotlib import colormaps

    if n <= 10:
        return colormaps["tab10"]
    if n <= 20:
        return colormaps["tab20"]
    return colormaps["turbo"].resampled(n)


def mpl_text(text: str) -> str:
    """Escapes ``$`` so that user text is drawn literally, not as mathtext.

    Examples:
        >>> mpl_text("$5")
        '\\\\$5'
    """
    # A "$" pair would switch matplotlib to mathtext (and can raise on user-given class names).
    return text.replace("$", r"\$")
