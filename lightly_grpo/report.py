"""Plots and the human-readable run report (``report.html``, ``report.md``, ``metrics.json``).

The functions here take plain data (numpy arrays, dicts of floats) so that the evaluator, the
stage and the command line can all hand their results over without this module importing them.
Figures are drawn on :class:`matplotlib.figure.Figure` objects directly (Agg canvas, no pyplot),
so nothing here touches matplotlib's global state.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

ClassNames = Sequence[str] | Mapping[int, str] | None
PerClass = Mapping[str, Mapping[str, Mapping[int, float]]]

# Metrics the summary sentence compares models on, in order of importance.
HEADLINE_METRICS = (
    "mean_average_precision_at_r",
    "precision_at_1",
    "knn_top1_dino",
    "knn_top1_lightly",
    "policy_accuracy",
)
# Table order for the evaluator's metrics; anything else follows in the order given.
_METRIC_ORDER = (
    "mean_average_precision_at_r",
    "precision_at_1",
    "r_precision",
    "mean_average_precision",
    "knn_top1_dino",
    "knn_top5_dino",
    "knn_top1_lightly",
    "knn_top5_lightly",
    "policy_accuracy",
)
_FIXED_NAMES = {
    "precision_at_1": "P@1",
    "r_precision": "R-precision",
    "mean_average_precision_at_r": "MAP@R",
    "mean_average_precision": "MAP",
    "nmi": "NMI",
    "ami": "AMI",
    "policy_accuracy": "Policy accuracy (prototype argmax)",
}
_KNN_PROTOCOLS = {"dino": "k=20, T=0.07", "lightly": "k=200, T=0.1"}
# Substrings of metric names for which a smaller value is the better one.
_LOWER_IS_BETTER = ("loss", "error", "seconds", "time_s", "memory")
_CURVE_ORDER = ("reward", "accuracy", "loss", "entropy", "clip_fraction", "degenerate_fraction")
_CLASSES_PER_ROW = 25
# The files write_report owns inside run_dir/figures (and replaces on every call).
_FIGURE_PATTERNS = ("training_curves.png", "retrieval_*.png", "embeddings_*.png", "per_class_*.png")
_SPLIT_STYLE = {"train": ("#1f77b4", "-"), "val": ("#d62728", "--")}
_QUERY_COLOR = "#1f5fbf"
_HIT_COLOR = "#1a9641"
_MISS_COLOR = "#d7191c"


# --------------------------------------------------------------------------------------------
# Names and formatting
# --------------------------------------------------------------------------------------------
def metric_display_name(name: str) -> str:
    """Returns the human-readable form of an evaluator metric name.

    Unknown names are returned unchanged.

    Examples:
        >>> metric_display_name("knn_top1_dino")
        'kNN top-1 (k=20, T=0.07)'
        >>> metric_display_name("recall_at_4")
        'Recall@4'
    """
    if name in _FIXED_NAMES:
        return _FIXED_NAMES[name]
    recall = re.fullmatch(r"recall_at_(\d+)", name)
    if recall:
        return f"Recall@{recall.group(1)}"
    knn = re.fullmatch(r"knn_top(\d+)_(.+)", name)
    if knn:
        protocol = _KNN_PROTOCOLS.get(knn.group(2), knn.group(2))
        return f"kNN top-{knn.group(1)} ({protocol})"
    return name


_CURVE_NAMES = {"kl": "KL to reference", "accuracy": "Policy accuracy"}


def _curve_display_name(name: str) -> str:
    return _CURVE_NAMES.get(name, name.replace("_", " ").capitalize())


def _higher_is_better(name: str) -> bool:
    return not any(part in name.lower() for part in _LOWER_IS_BETTER)


def _class_name(label: int, class_names: ClassNames) -> str:
    if class_names is None:
        return str(label)
    if isinstance(class_names, Mapping):
        return str(class_names.get(label, label))
    if 0 <= label < len(class_names):
        return str(class_names[label])
    return str(label)


def _mpl_text(text: str) -> str:
    # A "$" pair would switch matplotlib to mathtext (and can raise on user-given class names).
    return text.replace("$", r"\$")


def _format_value(value: float) -> str:
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.4f}"
    return f"{value:.4g}"


def _format_delta(delta: float) -> str:
    return "±0" if delta == 0 else f"{delta:+.4f}" if abs(delta) >= 1e-4 else f"{delta:+.2e}"


def _slug(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-").lower() or "model"
    slug, i = base, 2
    while slug in taken:
        slug, i = f"{base}-{i}", i + 1
    taken.add(slug)
    return slug


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def _finite_float(value: Any, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where} must be a number, got {value!r}") from err
    if not math.isfinite(number):
        raise ValueError(f"{where} is not finite: {number}")
    return number


def _clean_metrics(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    if not metrics:
        raise ValueError("metrics must name at least one model, got an empty mapping")
    clean: dict[str, dict[str, float]] = {}
    for model, values in metrics.items():
        if not values:
            raise ValueError(f"metrics for model {model!r} are empty")
        clean[str(model)] = {
            str(k): _finite_float(v, f"metrics[{model!r}][{k!r}]") for k, v in values.items()
        }
    return clean


def _clean_per_class(per_class: PerClass) -> dict[str, dict[str, dict[int, float]]]:
    clean: dict[str, dict[str, dict[int, float]]] = {}
    for model, by_metric in per_class.items():
        clean[str(model)] = {
            str(metric): {
                int(c): _finite_float(v, f"per_class[{model!r}][{metric!r}][{c!r}]")
                for c, v in by_class.items()
            }
            for metric, by_class in by_metric.items()
        }
    return clean


def _ordered_metric_names(metrics: Mapping[str, Mapping[str, float]]) -> list[str]:
    seen: list[str] = []
    for values in metrics.values():
        seen.extend(name for name in values if name not in seen)

    def key(name: str) -> tuple[int, int]:
        if name in _METRIC_ORDER:
            return (0, _METRIC_ORDER.index(name))
        recall = re.fullmatch(r"recall_at_(\d+)", name)
        if recall:
            return (1, int(recall.group(1)))
        return (2, seen.index(name))

    return sorted(seen, key=key)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------
def _save(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, bbox_inches="tight", facecolor="white")
    return out


def _curve_series(history: Sequence[Mapping[str, float]]) -> dict[str, list[str]]:
    """Groups history keys into panels and their splits: ``{"accuracy": ["train", "val"]}``."""
    panels: dict[str, list[str]] = {}
    for row in history:
        for key in row:
            if key == "epoch":
                continue
            split, _, base = key.rpartition("/")
            splits = panels.setdefault(base, [])
            if (split or "value") not in splits:
                splits.append(split or "value")

    def order(base: str) -> tuple[int, str]:
        return (_CURVE_ORDER.index(base) if base in _CURVE_ORDER else len(_CURVE_ORDER), base)

    return {base: panels[base] for base in sorted(panels, key=order)}


def _plot_curve(ax: Axes, history: Sequence[Mapping[str, float]], base: str, split: str) -> int:
    key = base if split == "value" else f"{split}/{base}"
    points = [
        (_number(r["epoch"], f"history[{i}]['epoch']"), _number(r[key], f"history[{i}][{key!r}]"))
        for i, r in enumerate(history)
        if key in r
    ]
    finite = [(x, y) for x, y in points if math.isfinite(y)]
    color, style = _SPLIT_STYLE.get(split, ("#555555", "-"))
    xs, ys = zip(*finite, strict=True) if finite else ((), ())
    marker = "o" if len(finite) <= 30 else None
    ax.plot(xs, ys, color=color, linestyle=style, marker=marker, markersize=3, label=split)
    return len(points) - len(finite)


def _number(value: Any, where: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where} must be a number, got {value!r}") from err


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
    panels = _curve_series(history)
    if not panels:
        raise ValueError("history rows hold only 'epoch', no metric to plot")
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.0 * ncols, 2.7 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, squeeze=False)).ravel()
    for ax, (base, splits) in zip(axes, panels.items(), strict=False):
        dropped = sum(_plot_curve(ax, history, base, split) for split in splits)
        only = f" ({splits[0]})" if splits in (["val"], ["test"]) else ""
        ax.set_title(_mpl_text(_curve_display_name(base) + only), fontsize=11)
        ax.grid(alpha=0.3)
        if len(splits) > 1:
            ax.legend(fontsize=8, frameon=False)
        if dropped:
            ax.text(
                0.02,
                0.95,
                f"{dropped} non-finite value(s) omitted",
                color=_MISS_COLOR,
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
    return _save(fig, path)


def _project_2d(embeddings: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, str]:
    if method == "auto":
        try:
            import umap  # noqa: F401
        except ImportError:
            method = "pca"
        else:
            method = "umap"
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=seed)
        xy = pca.fit_transform(embeddings)
        var = pca.explained_variance_ratio_
        return xy, f"PCA ({var[0]:.0%} + {var[1]:.0%} of variance)"
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (len(embeddings) - 1) // 3)))
        tsne = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed)
        return tsne.fit_transform(embeddings), "t-SNE"
    if method == "umap":
        try:
            import umap
        except ImportError as err:
            raise ValueError("method='umap' needs the 'umap-learn' package, not installed") from err
        return umap.UMAP(n_components=2, random_state=seed).fit_transform(embeddings), "UMAP"
    raise ValueError(f"method must be 'pca', 'tsne', 'umap' or 'auto', got {method!r}")


def _check_embeddings(embeddings: np.ndarray, labels: np.ndarray) -> None:
    if embeddings.ndim != 2 or embeddings.shape[1] < 2 or embeddings.shape[0] < 3:
        raise ValueError(f"embeddings must have shape (N>=3, D>=2), got {tuple(embeddings.shape)}")
    if labels.shape != (embeddings.shape[0],):
        raise ValueError(
            f"labels must have shape ({embeddings.shape[0]},) to match the embeddings, "
            f"got {tuple(labels.shape)}"
        )
    if not np.isfinite(embeddings).all():
        bad = int((~np.isfinite(embeddings)).any(axis=1).sum())
        raise ValueError(f"embeddings hold non-finite values in {bad} row(s)")


def _subsample(
    embeddings: np.ndarray, labels: np.ndarray, max_points: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    if len(embeddings) <= max_points:
        return embeddings, labels
    keep = np.sort(np.random.default_rng(seed).choice(len(embeddings), max_points, replace=False))
    return embeddings[keep], labels[keep]


def plot_embedding_map(
    embeddings: np.ndarray,
    labels: np.ndarray,
    path: str | Path,
    *,
    class_names: ClassNames = None,
    method: str = "pca",
    max_points: int = 5000,
    seed: int = 0,
    title: str | None = None,
) -> Path:
    """Draws a 2-D map of the embeddings, coloured by label, with a legend of class names.

    Args:
        embeddings: Array of shape (N, D).
        labels: Integer labels of shape (N,).
        path: Where to write the PNG.
        class_names: Names indexed by label (a sequence or a mapping); labels otherwise.
        method: ``"pca"``, ``"tsne"``, ``"umap"`` (needs ``umap-learn``) or ``"auto"``
            (UMAP when installed, PCA otherwise).
        max_points: At most this many points (a seeded random subset) are projected and drawn.
        seed: Seed of the subset and of the projection.
        title: Title above the map; the projection method is added below it.

    Returns:
        The path of the written PNG.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> plot_embedding_map(rng.normal(size=(100, 8)), np.arange(100) % 3, "/tmp/map.png")
        PosixPath('/tmp/map.png')
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    lab = np.asarray(labels)
    _check_embeddings(emb, lab)
    if max_points < 3:
        raise ValueError(f"max_points must be at least 3, got {max_points}")
    emb, lab = _subsample(emb, lab, max_points, seed)
    xy, method_text = _project_2d(emb, method, seed)
    classes = np.unique(lab)
    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = fig.subplots()
    cmap = _categorical_cmap(len(classes))
    for i, c in enumerate(classes):
        mask = lab == c
        ax.scatter(
            xy[mask, 0],
            xy[mask, 1],
            s=float(np.clip(20000 / len(emb), 3, 16)),
            alpha=0.7,
            color=cmap(i),
            linewidths=0,
            label=_mpl_text(_class_name(int(c), class_names)),
        )
    if len(classes) <= 20:
        ax.legend(
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            fontsize=10,
            frameon=False,
            markerscale=float(np.sqrt(60 / np.clip(20000 / len(emb), 3, 16))),
            handletextpad=0.2,
        )
    if title:
        fig.suptitle(_mpl_text(title), fontsize=12, fontweight="bold")
    subtitle = f"{method_text}, {len(emb):,} points, {len(classes)} classes"
    ax.set_title(subtitle, fontsize=10, color="#555555")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor("#cccccc")
    return _save(fig, path)


def _categorical_cmap(n: int) -> Any:
    """A colormap with at least ``n`` distinguishable colours (continuous beyond 20)."""
    from matplotlib import colormaps

    if n <= 10:
        return colormaps["tab10"]
    if n <= 20:
        return colormaps["tab20"]
    return colormaps["turbo"].resampled(n)


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
    ax.set_xlabel(_mpl_text(text), fontsize=size, color=color, labelpad=2)


def _short_label(label: int, class_names: ClassNames) -> str:
    text = _class_name(label, class_names)
    return text if len(text) <= 14 else text[:13] + "…"


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
    names = {int(c): _short_label(int(c), class_names) for c in np.unique(np.append(ql, rl))}
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
        _image_cell(ax, qi[row], _QUERY_COLOR, names[int(ql[row])], vrange, size)
        if row == 0:
            ax.set_title("query", fontsize=10.5, color=_QUERY_COLOR)
        for col in range(k):
            hit = int(rl[row, col]) == int(ql[row])
            ax = fig.add_subplot(grid[row, col + 2])
            color = _HIT_COLOR if hit else _MISS_COLOR
            _image_cell(ax, ri[row, col], color, names[int(rl[row, col])], vrange, size)
            if row == 0:
                ax.set_title(f"#{col + 1}", fontsize=10.5)
    if title:
        fig.suptitle(_mpl_text(title), fontsize=12, y=1 - 0.12 / height, va="top")
    return _save(fig, path)


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
    # Many classes wrap onto several rows so that the class names stay legible.
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
    return _save(fig, path)


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
    cmap = _categorical_cmap(len(models))
    for i, model in enumerate(models):
        values = [per_class[model][metric].get(c, np.nan) for c in classes]
        offset = (i - (len(models) - 1) / 2) * width
        ax.bar(x + offset, values, width, color=cmap(i), label=_mpl_text(model))
    names = [_mpl_text(_short_label(c, class_names)) for c in classes]
    ax.set_xticks(x, names, rotation=30 if len(classes) <= 12 else 90, ha="right", fontsize=9)
    ax.tick_params(axis="x", length=0)
    ax.set_ylabel(_mpl_text(metric_display_name(metric)))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


# --------------------------------------------------------------------------------------------
# Tables and the summary sentence
# --------------------------------------------------------------------------------------------
def _delta_class(name: str, delta: float) -> str:
    if delta == 0:
        return "same"
    return "better" if (delta > 0) == _higher_is_better(name) else "worse"


def _best_models(name: str, row: Mapping[str, float]) -> list[str]:
    best = max(row.values()) if _higher_is_better(name) else min(row.values())
    return [m for m, v in row.items() if v == best]


def _metric_rows(metrics: Mapping[str, Mapping[str, float]]) -> list[tuple[str, dict[str, float]]]:
    return [
        (name, {m: v[name] for m, v in metrics.items() if name in v})
        for name in _ordered_metric_names(metrics)
    ]


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def summary_sentence(metrics: Mapping[str, Mapping[str, float]]) -> str:
    """Says, in plain text, which model is best on the headline metrics.

    Headline metrics are MAP@R, P@1, the kNN top-1 presets and the policy accuracy, whichever
    are present (the first three table rows otherwise). With several models only metrics that
    at least two of them report are compared.

    Examples:
        >>> summary_sentence({"a": {"precision_at_1": 0.5}, "b": {"precision_at_1": 0.7}})
        'b is best on P@1 0.7000 vs 0.5000.'
    """
    rows = dict(_metric_rows(metrics))
    if len(metrics) > 1:
        rows = {name: row for name, row in rows.items() if len(row) > 1}
        if not rows:
            return "The models report no metric in common, so none is compared."
    heads = [m for m in HEADLINE_METRICS if m in rows] or list(rows)[:3]
    if len(metrics) == 1:
        model = next(iter(metrics))
        parts = [f"{metric_display_name(h)} {_format_value(rows[h][model])}" for h in heads]
        return f"{model}: {_join(parts)}."
    groups: dict[tuple[str, ...], list[str]] = {}
    for head in heads:
        best = _best_models(head, rows[head])
        groups.setdefault(() if len(best) == len(rows[head]) else tuple(best), []).append(head)
    clauses = []
    for winners, names in groups.items():
        listed = _join([_headline_with_values(n, rows[n], winners) for n in names])
        if not winners:
            clauses.append(f"all models tie on {listed}")
        elif len(winners) > 1:
            clauses.append(f"{_join(winners)} tie for best on {listed}")
        elif len(groups) == 1 and len(names) > 1:
            clauses.append(f"{winners[0]} is best on every headline metric: {listed}")
        else:
            clauses.append(f"{winners[0]} is best on {listed}")
    text = "; ".join(clauses) + "."
    return "A" + text[1:] if text.startswith("all models") else text


def _headline_with_values(name: str, row: Mapping[str, float], winners: Sequence[str]) -> str:
    label = metric_display_name(name)
    best = row[_best_models(name, row)[0]]
    if len(winners) == 1 and len(row) == 2:
        other = next(v for m, v in row.items() if m != winners[0])
        return f"{label} {_format_value(best)} vs {_format_value(other)}"
    return f"{label} {_format_value(best)}"


def _html_metric_table(metrics: Mapping[str, Mapping[str, float]]) -> str:
    models = list(metrics)
    with_delta = len(models) >= 2
    head = "".join(f"<th>{html.escape(m)}</th>" for m in models)
    if with_delta:
        head += f'<th title="{html.escape(models[-1])} minus {html.escape(models[0])}">Δ</th>'
    body = []
    for name, row in _metric_rows(metrics):
        best = set(_best_models(name, row)) if with_delta and len(row) > 1 else set()
        cells = "".join(
            (
                f'<td class="best">{_format_value(row[m])}</td>'
                if m in best
                else f"<td>{_format_value(row[m])}</td>"
            )
            if m in row
            else '<td class="missing">–</td>'
            for m in models
        )
        if with_delta:
            cells += _html_delta_cell(name, row, models[0], models[-1])
        label = html.escape(metric_display_name(name))
        body.append(f'<tr><th scope="row" title="{html.escape(name)}">{label}</th>{cells}</tr>')
    return (
        f'<table class="metrics"><thead><tr><th>metric</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _html_delta_cell(name: str, row: Mapping[Any, float], first: Any, last: Any) -> str:
    if first not in row or last not in row:
        return '<td class="delta missing">–</td>'
    delta = row[last] - row[first]
    return f'<td class="delta {_delta_class(name, delta)}">{_format_delta(delta)}</td>'


def _html_per_class_table(per_class: PerClass, metric: str, class_names: ClassNames) -> str:
    models = [m for m in per_class if metric in per_class[m]]
    classes = sorted({int(c) for m in models for c in per_class[m][metric]})
    head = "".join(f"<th>{html.escape(m)}</th>" for m in models)
    if len(models) >= 2:
        head += "<th>Δ</th>"
    body = []
    for c in classes:
        row = {m: per_class[m][metric][c] for m in models if c in per_class[m][metric]}
        cells = "".join(
            f"<td>{_format_value(row[m])}</td>" if m in row else '<td class="missing">–</td>'
            for m in models
        )
        if len(models) >= 2:
            cells += _html_delta_cell(metric, row, models[0], models[-1])
        name = html.escape(_class_name(c, class_names))
        body.append(f'<tr><th scope="row">{name}</th>{cells}</tr>')
    return (
        f'<table class="metrics compact"><thead><tr><th>class</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _md_escape(text: str) -> str:
    # Markdown renders inline HTML, so user text is HTML-escaped here too.
    text = html.escape(text, quote=False).replace("\n", " ")
    return re.sub(r"([|\[\]])", r"\\\1", text)


def _md_metric_table(metrics: Mapping[str, Mapping[str, float]]) -> str:
    models = list(metrics)
    header = ["metric", *models] + (["Δ"] if len(models) >= 2 else [])
    lines = [
        "| " + " | ".join(_md_escape(h) for h in header) + " |",
        "|" + "---|" + "---:|" * (len(header) - 1),
    ]
    for name, row in _metric_rows(metrics):
        cells = [_format_value(row[m]) if m in row else "–" for m in models]
        if len(models) >= 2:
            has_both = models[0] in row and models[-1] in row
            cells.append(_format_delta(row[models[-1]] - row[models[0]]) if has_both else "–")
        lines.append(f"| {_md_escape(metric_display_name(name))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------
_CSS = """
:root { --fg: #1d2330; --muted: #5b6475; --line: #e3e6ec; --accent: #1f5fbf;
        --good: #137a36; --bad: #c0262d; --bg-soft: #f6f7f9; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.5;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; }
main { max-width: 1320px; margin: 0 auto; padding: 28px 32px 60px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 36px 0 10px; padding-bottom: 6px;
     border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 6px; }
.meta { color: var(--muted); font-size: 13px; margin: 0 0 14px; }
nav { font-size: 13px; margin-bottom: 18px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; }
.summary { font-size: 16px; background: var(--bg-soft); border-left: 4px solid var(--accent);
           padding: 10px 14px; margin: 0 0 8px; }
.hint { color: var(--muted); font-size: 13px; margin: 6px 0; }
table.metrics { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: 8px 0; }
table.metrics th, table.metrics td { padding: 6px 14px; border-bottom: 1px solid var(--line); }
table.metrics thead th { text-align: right; font-weight: 600; background: var(--bg-soft);
                         border-bottom: 2px solid #cfd4dc; }
table.metrics thead th:first-child, table.metrics tbody th { text-align: left; }
table.metrics tbody th { font-weight: 500; }
table.metrics td { text-align: right; }
table.metrics td.best { font-weight: 700; }
table.metrics td.missing { color: var(--muted); }
table.metrics td.delta { font-weight: 600; }
table.metrics td.better { color: var(--good); background: #eaf6ee; }
table.metrics td.worse { color: var(--bad); background: #fbecec; }
table.metrics td.same { color: var(--muted); }
table.compact th, table.compact td { padding: 3px 12px; font-size: 14px; }
.pair { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.pair > figure { flex: 1 1 0; min-width: 480px; }
.pair > div { flex: 0 0 auto; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(360px, 1fr)); gap: 20px; }
.grid.wide { grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); }
figure { margin: 0; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line);
             border-radius: 4px; }
figcaption { font-size: 13px; color: var(--muted); margin-top: 4px; }
figcaption b { color: var(--fg); }
details { margin: 10px 0; }
summary { cursor: pointer; color: var(--accent); }
pre { background: var(--bg-soft); padding: 12px; border-radius: 4px; overflow-x: auto;
      font-size: 13px; }
ul.notes { padding-left: 20px; }
"""

# Lets a headless browser confirm that every image decoded and fits the page.
_IMAGE_CHECK_JS = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var width = document.documentElement.clientWidth;
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  var wide = imgs.filter(function (i) { return i.getBoundingClientRect().right > width + 1; });
  document.body.dataset.imagesOk = ok.length;
  document.body.dataset.imagesTotal = imgs.length;
  document.body.dataset.imagesOverflow = wide.length;
});
"""


def _html_figure(rel: str, caption: str, alt: str = "") -> str:
    """``caption`` is HTML (callers escape user text); ``alt`` is plain text."""
    src = html.escape(rel, quote=True)
    alt_text = html.escape(alt or re.sub(r"<[^>]+>", "", caption), quote=True)
    below = f"<figcaption>{caption}</figcaption>" if caption else ""
    return (
        f'<figure><a href="{src}"><img src="{src}" alt="{alt_text}" loading="eager"></a>'
        f"{below}</figure>"
    )


def _section(anchor: str, heading: str, inner: str) -> str:
    return f'<section id="{anchor}"><h2>{html.escape(heading)}</h2>{inner}</section>'


def _retrieval_figures(
    retrieval: Mapping[str, Mapping[str, np.ndarray]],
    figures: Path,
    slugs: dict[str, str],
    class_names: ClassNames,
) -> list[tuple[str, str]]:
    needed = ("query_images", "query_labels", "result_images", "result_labels")
    out = []
    for model, data in retrieval.items():
        missing = [key for key in needed if key not in data]
        if missing:
            raise ValueError(f"retrieval[{model!r}] lacks {missing}; it needs {list(needed)}")
        path = plot_retrieval_grid(
            data["query_images"],
            data["query_labels"],
            data["result_images"],
            data["result_labels"],
            figures / f"retrieval_{slugs[model]}.png",
            class_names=class_names,
        )
        hits = float(
            np.mean(np.asarray(data["result_labels"]) == np.asarray(data["query_labels"])[:, None])
        )
        out.append(
            (
                path.name,
                f"<b>{html.escape(model)}</b> · {hits:.0%} of the shown "
                "results share the query's label",
            )
        )
    return out


def _embedding_figures(
    embeddings: Mapping[str, tuple[np.ndarray, np.ndarray]],
    figures: Path,
    slugs: dict[str, str],
    class_names: ClassNames,
    method: str,
) -> list[tuple[str, str]]:
    out = []
    for model, pair in embeddings.items():
        if len(pair) != 2:
            raise ValueError(f"embeddings[{model!r}] must be (embeddings, labels), got {pair!r}")
        path = plot_embedding_map(
            pair[0],
            pair[1],
            figures / f"embeddings_{slugs[model]}.png",
            class_names=class_names,
            method=method,
            title=model,
        )
        out.append((path.name, f"<b>{html.escape(model)}</b> · colour = label"))
    return out


def _figure_grid(items: Sequence[tuple[str, str]], css_class: str = "grid") -> str:
    return (
        f'<div class="{css_class}">'
        + "".join(_html_figure(f"figures/{name}", caption) for name, caption in items)
        + "</div>"
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _write_metrics_json(run_dir: Path, payload: dict[str, Any]) -> Path:
    path = run_dir / "metrics.json"
    text = json.dumps(payload, indent=2, default=_json_default, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def _model_slugs(*groups: Mapping[str, Any] | None) -> dict[str, str]:
    taken: set[str] = set()
    slugs: dict[str, str] = {}
    for group in groups:
        for model in group or {}:
            if model not in slugs:
                slugs[model] = _slug(model, taken)
    return slugs


def _per_class_section(
    per_class: dict[str, dict[str, dict[int, float]]], figures: Path, class_names: ClassNames
) -> tuple[str, list[tuple[str, str]]]:
    metric_names: list[str] = []
    for by_metric in per_class.values():
        metric_names.extend(m for m in by_metric if m not in metric_names)
    parts: list[str] = []
    files: list[tuple[str, str]] = []
    for metric in metric_names:
        png = plot_per_class(
            per_class,
            figures / f"per_class_{_slug(metric, set())}.png",
            metric=metric,
            class_names=class_names,
        )
        files.append((metric_display_name(metric), png.name))
        table = _html_per_class_table(per_class, metric, class_names)
        n_classes = len({c for m in per_class.values() for c in m.get(metric, {})})
        name = html.escape(metric_display_name(metric))
        figure = _html_figure(f"figures/{png.name}", "", alt=name)
        if n_classes > 20:  # a long table would push the rest of the report far down
            table = f"<details><summary>table ({n_classes} classes)</summary>{table}</details>"
            parts.append(f"<h3>{name}</h3>{figure}{table}")
        else:
            parts.append(f'<h3>{name}</h3><div class="pair">{figure}<div>{table}</div></div>')
    return "".join(parts), files


def _html_page(
    title: str, generated: str, sections: Sequence[tuple[str, str, str]], summary: str
) -> str:
    nav = "".join(f'<a href="#{a}">{html.escape(h)}</a>' for a, h, _ in sections)
    body = "".join(_section(a, h, inner) for a, h, inner in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>"
        f"<script>{_IMAGE_CHECK_JS}</script></head><body><main>"
        f'<h1>{html.escape(title)}</h1><p class="meta">generated {html.escape(generated)}</p>'
        f'<nav>{nav}</nav><p class="summary">{html.escape(summary)}</p>{body}'
        "</main></body></html>\n"
    )


def write_report(
    run_dir: str | Path,
    *,
    title: str,
    metrics: Mapping[str, Mapping[str, float]],
    per_class: PerClass | None = None,
    history: Sequence[Mapping[str, float]] | None = None,
    embeddings: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    retrieval: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    class_names: ClassNames = None,
    config: Mapping[str, Any] | None = None,
    notes: Sequence[str] | None = None,
    embedding_method: str = "pca",
) -> Path:
    """Writes ``metrics.json``, ``figures/*.png``, ``report.html`` and ``report.md`` to a folder.

    With two or more models the metric table gets a Δ column (last model minus first), green
    where the last model is better and red where it is worse. Figures that an earlier call left
    in ``run_dir/figures`` are replaced.

    Args:
        run_dir: The run folder; created if missing.
        title: Title of the report.
        metrics: Model name -> metric name -> value (evaluator names, e.g. ``precision_at_1``).
        per_class: Model name -> metric name -> class -> value.
        history: Training-curve rows (see :func:`plot_training_curves`).
        embeddings: Model name -> (embeddings (N, D), labels (N,)) for the 2-D maps.
        retrieval: Model name -> dict with ``query_images``, ``query_labels``,
            ``result_images`` and ``result_labels`` (see :func:`plot_retrieval_grid`).
        class_names: Names indexed by label (a sequence or a mapping).
        config: The run's configuration, stored in ``metrics.json`` and shown collapsed.
        notes: Free-text remarks listed in the report.
        embedding_method: Projection of the embedding maps (see :func:`plot_embedding_map`).

    Returns:
        The path of ``report.html``.

    Examples:
        >>> write_report("/tmp/run", title="demo", metrics={"simclr": {"precision_at_1": 0.8}})
        PosixPath('/tmp/run/report.html')
    """
    run = Path(run_dir)
    if run.exists() and not run.is_dir():
        raise ValueError(f"run_dir exists and is not a directory: {run}")
    clean = _clean_metrics(metrics)
    pc = _clean_per_class(per_class) if per_class else None
    figures = run / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    # A rerun into the same folder must not leave figures of models no longer in the report.
    for pattern in _FIGURE_PATTERNS:
        for stale in figures.glob(pattern):
            stale.unlink()
    generated = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    _write_metrics_json(
        run,
        {
            "title": title,
            "generated": generated,
            "metrics": clean,
            "per_class": pc,
            "config": dict(config) if config else None,
            "notes": list(notes) if notes else None,
        },
    )
    slugs = _model_slugs(clean, retrieval, embeddings)
    summary = summary_sentence(clean)
    sections: list[tuple[str, str, str]] = []
    md_images: list[tuple[str, str]] = []

    delta_hint = ""
    if len(clean) >= 2:
        first, last = html.escape(next(iter(clean))), html.escape(list(clean)[-1])
        delta_hint = (
            f'<p class="hint">Δ = {last} − {first}; green is better, red worse. '
            "Bold marks the best value per row.</p>"
        )
    sections.append(("metrics", "Metrics", _html_metric_table(clean) + delta_hint))
    if history:
        png = plot_training_curves(history, figures / "training_curves.png")
        md_images.append(("Training curves", f"figures/{png.name}"))
        sections.append(
            (
                "training",
                "Training curves",
                _html_figure(
                    f"figures/{png.name}", "Per epoch; solid = train, dashed = validation."
                ),
            )
        )
    if retrieval:
        items = _retrieval_figures(retrieval, figures, slugs, class_names)
        md_images += [
            (f"Retrieval: {m}", f"figures/{n}") for m, (n, _) in zip(retrieval, items, strict=True)
        ]
        legend = (
            '<p class="hint">Each row: a query (blue frame) and its nearest results in '
            "order; green frame = same label as the query, red = different.</p>"
        )
        sections.append(
            ("retrieval", "Retrieval examples", legend + _figure_grid(items, "grid wide"))
        )
    if embeddings:
        items = _embedding_figures(embeddings, figures, slugs, class_names, embedding_method)
        md_images += [
            (f"Embedding map: {m}", f"figures/{n}")
            for m, (n, _) in zip(embeddings, items, strict=True)
        ]
        sections.append(("embeddings", "Embedding maps", _figure_grid(items)))
    if pc:
        inner, files = _per_class_section(pc, figures, class_names)
        md_images += [(f"Per class: {m}", f"figures/{n}") for m, n in files]
        sections.append(("per-class", "Per-class results", inner))
    if notes:
        items_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
        sections.append(("notes", "Notes", f'<ul class="notes">{items_html}</ul>'))
    if config:
        text = json.dumps(dict(config), indent=2, default=_json_default, sort_keys=True)
        sections.append(
            (
                "config",
                "Configuration",
                f"<details><summary>show configuration</summary>"
                f"<pre>{html.escape(text)}</pre></details>",
            )
        )
    report = run / "report.html"
    report.write_text(_html_page(title, generated, sections, summary), encoding="utf-8")
    _write_markdown(run, title, generated, summary, clean, md_images, notes)
    return report


def _write_markdown(
    run: Path,
    title: str,
    generated: str,
    summary: str,
    metrics: Mapping[str, Mapping[str, float]],
    images: Sequence[tuple[str, str]],
    notes: Sequence[str] | None,
) -> Path:
    lines = [
        f"# {_md_escape(title)}",
        "",
        f"_generated {generated}_",
        "",
        _md_escape(summary),
        "",
        "## Metrics",
        "",
        _md_metric_table(metrics),
        "",
    ]
    if len(metrics) >= 2:
        first, last = next(iter(metrics)), list(metrics)[-1]
        lines += [_md_escape(f"Δ = {last} − {first}."), ""]
    for caption, rel in images:
        lines += [f"## {_md_escape(caption)}", "", f"![{_md_escape(caption)}]({rel})", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {_md_escape(n)}" for n in notes] + [""]
    path = run / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
