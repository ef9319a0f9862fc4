"""The sections of the report: each draws its figures and returns its HTML and Markdown parts.

A section is ``(anchor, heading, inner HTML)``; the figures it adds to the Markdown report are
:class:`MarkdownImage` entries.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from lightly_grpo.report.figures import (
    curve_series,
    plot_embedding_map,
    plot_per_class,
    plot_retrieval_grid,
    plot_training_curves,
)
from lightly_grpo.report.formatting import ClassNames, slug
from lightly_grpo.report.html import figure_grid, hint, html_figure
from lightly_grpo.report.names import metric_display_name
from lightly_grpo.report.tables import html_metric_table, html_per_class_table

Section = tuple[str, str, str]
_RETRIEVAL_KEYS = ("query_images", "query_labels", "result_images", "result_labels")
_CURVES_CAPTION = "Per epoch; solid = train, dashed = validation."
# Why the loss panel looks flat: the policy-gradient term is -mean(A * ratio) with ratio = 1 at
# the first inner step and advantages that sum to zero within every group.
LOSS_NOTE = (
    "The GRPO surrogate loss stays near 0 by construction: with one inner step the probability "
    "ratio is 1 and the group-normalised advantages sum to zero, so only a KL term can move it. "
    "Reward, accuracy and entropy are what show learning."
)


class MarkdownImage(NamedTuple):
    """A figure of the Markdown report: heading, path relative to the run, optional note."""

    caption: str
    rel: str
    note: str = ""


def json_default(value: Any) -> Any:
    """``json.dumps`` fallback: numpy scalars and arrays as Python values, anything else as str.

    Examples:
        >>> json.dumps({"n": np.int64(3)}, default=json_default)
        '{"n": 3}'
    """
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def metrics_section(metrics: Mapping[str, Mapping[str, float]]) -> Section:
    """The metric table, with a line explaining the Δ column when there is one."""
    delta_hint = ""
    if len(metrics) >= 2:
        first, last = html.escape(next(iter(metrics))), html.escape(list(metrics)[-1])
        delta_hint = hint(
            f"Δ = {last} − {first}; green is better, red worse. Bold marks the best value per row."
        )
    return ("metrics", "Metrics", html_metric_table(metrics) + delta_hint)


def training_section(
    history: Sequence[Mapping[str, float]], figures: Path
) -> tuple[Section, list[MarkdownImage]]:
    """The training curves, with a note on the flat GRPO loss when a loss is plotted."""
    png = plot_training_curves(history, figures / "training_curves.png")
    note = LOSS_NOTE if "loss" in curve_series(history) else ""
    caption = f"{_CURVES_CAPTION} {html.escape(note)}".strip()
    section = (
        "training",
        "Training curves",
        html_figure(f"figures/{png.name}", caption, alt="Training curves"),
    )
    return section, [MarkdownImage("Training curves", f"figures/{png.name}", note)]


def retrieval_section(
    retrieval: Mapping[str, Mapping[str, np.ndarray]],
    figures: Path,
    slugs: Mapping[str, str],
    class_names: ClassNames,
) -> tuple[Section, list[MarkdownImage]]:
    """A retrieval grid per model, captioned with its share of same-label results."""
    items, images = [], []
    for model, data in retrieval.items():
        missing = [key for key in _RETRIEVAL_KEYS if key not in data]
        if missing:
            raise ValueError(
                f"retrieval[{model!r}] lacks {missing}; it needs {list(_RETRIEVAL_KEYS)}"
            )
        path = plot_retrieval_grid(
            data["query_images"],
            data["query_labels"],
            data["result_images"],
            data["result_labels"],
            figures / f"retrieval_{slugs[model]}.png",
            class_names=class_names,
        )
        query_labels = np.asarray(data["query_labels"])[:, None]
        hits = float(np.mean(np.asarray(data["result_labels"]) == query_labels))
        caption = (
            f"<b>{html.escape(model)}</b> · {hits:.0%} of the shown results share the query's label"
        )
        items.append((path.name, caption))
        images.append(MarkdownImage(f"Retrieval: {model}", f"figures/{path.name}"))
    legend = hint(
        "Each row: a query (blue frame) and its nearest results in order; green frame = same "
        "label as the query, red = different."
    )
    section = ("retrieval", "Retrieval examples", legend + figure_grid(items, "grid wide"))
    return section, images


def embedding_section(
    embeddings: Mapping[str, tuple[np.ndarray, np.ndarray]],
    figures: Path,
    slugs: Mapping[str, str],
    class_names: ClassNames,
    method: str,
) -> tuple[Section, list[MarkdownImage]]:
    """A 2-D embedding map per model."""
    items, images = [], []
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
        items.append((path.name, f"<b>{html.escape(model)}</b> · colour = label"))
        images.append(MarkdownImage(f"Embedding map: {model}", f"figures/{path.name}"))
    return ("embeddings", "Embedding maps", figure_grid(items)), images


def per_class_section(
    per_class: dict[str, dict[str, dict[int, float]]], figures: Path, class_names: ClassNames
) -> tuple[Section, list[MarkdownImage]]:
    """A bar chart and a table per per-class metric."""
    metric_names: list[str] = []
    for by_metric in per_class.values():
        metric_names.extend(m for m in by_metric if m not in metric_names)
    parts: list[str] = []
    images: list[MarkdownImage] = []
    for metric in metric_names:
        png = plot_per_class(
            per_class,
            figures / f"per_class_{slug(metric, set())}.png",
            metric=metric,
            class_names=class_names,
        )
        name = metric_display_name(metric)
        images.append(MarkdownImage(f"Per class: {name}", f"figures/{png.name}"))
        table = html_per_class_table(per_class, metric, class_names)
        n_classes = len({c for m in per_class.values() for c in m.get(metric, {})})
        figure = html_figure(f"figures/{png.name}", "", alt=name)
        name = html.escape(name)
        if n_classes > 20:  # a long table would push the rest of the report far down
            table = f"<details><summary>table ({n_classes} classes)</summary>{table}</details>"
            parts.append(f"<h3>{name}</h3>{figure}{table}")
        else:
            parts.append(f'<h3>{name}</h3><div class="pair">{figure}<div>{table}</div></div>')
    return ("per-class", "Per-class results", "".join(parts)), images


def notes_section(notes: Sequence[str]) -> Section:
    """The free-text remarks as a list."""
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return ("notes", "Notes", f'<ul class="notes">{items}</ul>')


def config_section(config: Mapping[str, Any]) -> Section:
    """The run's configuration as collapsed, pretty-printed JSON."""
    text = json.dumps(dict(config), indent=2, default=json_default, sort_keys=True)
    inner = (
        f"<details><summary>show configuration</summary><pre>{html.escape(text)}</pre></details>"
    )
    return ("config", "Configuration", inner)
