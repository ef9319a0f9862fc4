"""A grid of retrieval examples: each query followed by its top-K results, framed hit or miss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lightly_grpo.report.figures._common import (
    HIT_COLOR,
    MISS_COLOR,
    QUERY_COLOR,
    mpl_text,
    save_figure,
)
from lightly_grpo.report.formatting import ClassNames, short_label


def _check_retrieval(
    query_images: np.ndarray,
    query_labels: np.ndarray,
    result_images: np.ndarray,
    result_labels: np.ndarray,
) -> None:
    q = query_images.shape[0] if query_images.ndim else 0
    if query_images.ndim not in (3, 4) or q == 0:
        raise ValueError(
            f"query_images must have shape (Q>0, H, W) or (Q>0, H, W, 3), "
            f"got {tuple(query_images.shape)}"
        )
    if query_images.ndim == 4 and query_images.shape[-1] != 3:
        raise ValueError(f"colour query_images need 3 channels last, got {query_images.shape}")
    if query_labels.shape != (q,):
        raise ValueError(f"query_labels must have shape ({q},), got {query_labels.shape}")
    expected = (q, result_labels.shape[1] if result_labels.ndim == 2 else -1)
    if result_labels.ndim != 2 or result_labels.shape[0] != q or result_labels.shape[1] == 0:
        raise ValueError(f"result_labels must have shape ({q}, K>0), got {result_labels.shape}")
    if result_images.shape != expected + query_images.shape[1:]:
        raise ValueError(
            f"result_images must have shape {expected + query_images.shape[1:]}, "
            f"got {result_images.shape}"
        )


def _image_cell(
    ax: Axes, image: np.ndarray, color: str, text: str, vrange: tuple[float, float], size: float
) -> None:
    cmap = "gray" if image.ndim == 2 else None
    ax.imshow(image, cmap=cmap, vmin=vrange[0], vmax=vrange[1], interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(3.5)
    ax.set_xlabel(mpl_text(text), fontsize=size, color=color, labelpad=2)


def plot_retrieval_grid(
    query_images: np.ndarray,
    query_labels: np.ndarray,
    result_images: np.ndarray,
    result_labels: np.ndarray,
    path: str | Path,
    *,
    class_names: ClassNames = None,
    title: str | None = None,
) -> Path:
    """Draws one row per query: the query (blue frame), then its top-K results.

    A result gets a green frame when its label equals the query's label, a red one otherwise;
    the label is written small under each image.

    Args:
        query_images: (Q, H, W) grayscale or (Q, H, W, 3) colour images, ideally uint8.
        query_labels: (Q,) labels of the queries.
        result_images: (Q, K, H, W) or (Q, K, H, W, 3) images of the top-K results per query.
        result_labels: (Q, K) labels of the results.
        path: Where to write the PNG.
        class_names: Names indexed by label (a sequence or a mapping); labels otherwise.
        title: Title above the grid.

    Returns:
        The path of the written PNG.

    Examples:
        >>> imgs = np.zeros((2, 8, 8), dtype=np.uint8)
        >>> res = np.zeros((2, 3, 8, 8), dtype=np.uint8)
        >>> plot_retrieval_grid(imgs, np.array([0, 1]), res, np.array([[0, 1, 1], [1, 1, 0]]),
        ...                     "/tmp/grid.png")
        PosixPath('/tmp/grid.png')
    """
    qi, ql = np.asarray(query_images), np.asarray(query_labels)
    ri, rl = np.asarray(result_images), np.asarray(result_labels)
    _check_retrieval(qi, ql, ri, rl)
    q, k = rl.shape
    vrange = (
        (0.0, 255.0)
        if qi.dtype == np.uint8
        else (float(min(qi.min(), ri.min())), float(max(qi.max(), ri.max())))
    )
    names = {int(c): short_label(int(c), class_names) for c in np.unique(np.append(ql, rl))}
    # Shrink the labels until the longest fits under its 0.85-inch cell (about 58 pt).
    size = float(np.clip(58 / (0.6 * max(len(n) for n in names.values())), 7.0, 10.5))
    # Fixed spacing instead of constrained layout: laying out Q*(K+1) axes is slow otherwise.
    top_in, height = (0.7 if title else 0.35), 1.1 * q + (0.7 if title else 0.35) + 0.3
    fig = Figure(figsize=(0.85 * (k + 1.2), height))
    # A narrow empty column separates each query from its results.
    grid = fig.add_gridspec(
        q,
        k + 2,
        width_ratios=[1, 0.2] + [1] * k,
        left=0.01,
        right=0.99,
        top=1 - top_in / height,
        bottom=0.3 / height,
        wspace=0.12,
        hspace=0.42,
    )
    for row in range(q):
        ax = fig.add_subplot(grid[row, 0])
        _image_cell(ax, qi[row], QUERY_COLOR, names[int(ql[row])], vrange, size)
        if row == 0:
            ax.set_title("query", fontsize=10.5, color=QUERY_COLOR)
        for col in range(k):
            hit = int(rl[row, col]) == int(ql[row])
            ax = fig.add_subplot(grid[row, col + 2])
            color = HIT_COLOR if hit else MISS_COLOR
            _image_cell(ax, ri[row, col], color, names[int(rl[row, col])], vrange, size)
            if row == 0:
                ax.set_title(f"#{col + 1}", fontsize=10.5)
    if title:
        fig.suptitle(mpl_text(title), fontsize=12, y=1 - 0.12 / height, va="top")
    return save_figure(fig, path)
