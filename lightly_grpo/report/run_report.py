"""``write_report``: the run folder's ``metrics.json``, ``figures/*.png``, ``report.html`` and
``report.md`` from plain data (numpy arrays, dicts of floats).

It takes plain data so that the evaluator, the stage and the command line can all hand their
results over without the report importing them.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightly_grpo.report.formatting import ClassNames, PerClass, slug
from lightly_grpo.report.html import html_page
from lightly_grpo.report.inputs import clean_metrics, clean_per_class
from lightly_grpo.report.markdown import markdown_report
from lightly_grpo.report.sections import (
    MarkdownImage,
    Section,
    config_section,
    embedding_section,
    json_default,
    metrics_section,
    notes_section,
    per_class_section,
    retrieval_section,
    training_section,
)
from lightly_grpo.report.tables import summary_sentence

# The files write_report owns inside run_dir/figures (and replaces on every call).
_FIGURE_PATTERNS = ("training_curves.png", "retrieval_*.png", "embeddings_*.png", "per_class_*.png")


def _model_slugs(*groups: Mapping[str, Any] | None) -> dict[str, str]:
    """One distinct file-name slug per model name, across all inputs."""
    taken: set[str] = set()
    slugs: dict[str, str] = {}
    for group in groups:
        for model in group or {}:
            if model not in slugs:
                slugs[model] = slug(model, taken)
    return slugs


def _write_metrics_json(run_dir: Path, payload: dict[str, Any]) -> Path:
    path = run_dir / "metrics.json"
    text = json.dumps(payload, indent=2, default=json_default, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def _fresh_figures_dir(run: Path) -> Path:
    figures = run / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    # A rerun into the same folder must not leave figures of models no longer in the report.
    for pattern in _FIGURE_PATTERNS:
        for stale in figures.glob(pattern):
            stale.unlink()
    return figures


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
    clean = clean_metrics(metrics)
    pc = clean_per_class(per_class) if per_class else None
    figures = _fresh_figures_dir(run)
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
    sections: list[Section] = [metrics_section(clean)]
    md_images: list[MarkdownImage] = []
    drawn: list[tuple[Section, list[MarkdownImage]]] = []
    if history:
        drawn.append(training_section(history, figures))
    if retrieval:
        drawn.append(retrieval_section(retrieval, figures, slugs, class_names))
    if embeddings:
        drawn.append(embedding_section(embeddings, figures, slugs, class_names, embedding_method))
    if pc:
        drawn.append(per_class_section(pc, figures, class_names))
    for section, images in drawn:
        sections.append(section)
        md_images += images
    if notes:
        sections.append(notes_section(notes))
    if config:
        sections.append(config_section(config))
    summary = summary_sentence(clean)
    report = run / "report.html"
    report.write_text(html_page(title, generated, sections, summary), encoding="utf-8")
    markdown = markdown_report(title, generated, summary, clean, md_images, notes)
    (run / "report.md").write_text(markdown, encoding="utf-8")
    return report
