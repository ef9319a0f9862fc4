"""A 2-D map of embeddings (PCA, t-SNE or UMAP), coloured by label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from lightly_grpo.report.figures._common import categorical_cmap, mpl_text, save_figure
from lightly_grpo.report.formatting import ClassNames, class_name


def _project_2d(embeddings: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, str]:
    """The 2-D projection and a short description of it for the subtitle."""
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


def subsample(
    embeddings: np.ndarray, labels: np.ndarray, max_points: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` rows, a seeded random subset kept in the original order.

    Examples:
        >>> emb, lab = subsample(np.zeros((10, 2)), np.arange(10), 4, seed=0)
        >>> emb.shape, bool((np.diff(lab) > 0).all())
        ((4, 2), True)
    """
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
    emb, lab = subsample(emb, lab, max_points, seed)
    xy, method_text = _project_2d(emb, method, seed)
    classes = np.unique(lab)
    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = fig.subplots()
    cmap = categorical_cmap(len(classes))
    marker_size = float(np.clip(20000 / len(emb), 3, 16))
    for i, c in enumerate(classes):
        mask = lab == c
        ax.scatter(
            xy[mask, 0],
            xy[mask, 1],
            s=marker_size,
            alpha=0.7,
            color=cmap(i),
            linewidths=0,
            label=mpl_text(class_name(int(c), class_names)),
        )
    if len(classes) <= 20:
        ax.legend(
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            fontsize=10,
            frameon=False,
            markerscale=float(np.sqrt(60 / marker_size)),
            handletextpad=0.2,
        )
    if title:
        fig.suptitle(mpl_text(title), fontsize=12, fontweight="bold")
    subtitle = f"{method_text}, {len(emb):,} points, {len(classes)} classes"
    ax.set_title(subtitle, fontsize=10, color="#555555")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor("#cccccc")
    return save_figure(fig, path)
