"""Metric tables (HTML and Markdown), per-class tables, delta cells and the summary sentence.

With two or more models a Δ column shows the last model minus the first; whether a delta is an
improvement is decided by :func:`lightly_grpo.report.names.higher_is_better`.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from lightly_grpo.report.formatting import (
    ClassNames,
    PerClass,
    class_name,
    format_delta,
    format_value,
    join_words,
    md_escape,
)
from lightly_grpo.report.names import (
    HEADLINE_METRICS,
    higher_is_better,
    metric_display_name,
    ordered_metric_names,
)

Metrics = Mapping[str, Mapping[str, float]]


def delta_class(name: str, delta: float) -> str:
    """CSS class of a delta cell: ``better``, ``worse`` or ``same``.

    Examples:
        >>> delta_class("precision_at_1", 0.1), delta_class("train_loss", 0.1)
        ('better', 'worse')
    """
    if delta == 0:
        return "same"
    return "better" if (delta > 0) == higher_is_better(name) else "worse"


def best_models(name: str, row: Mapping[str, float]) -> list[str]:
    """The models with the best value of one metric (several on a tie).

    Examples:
        >>> best_models("train_loss", {"a": 0.2, "b": 0.1, "c": 0.1})
        ['b', 'c']
    """
    best = max(row.values()) if higher_is_better(name) else min(row.values())
    return [m for m, v in row.items() if v == best]


def metric_rows(metrics: Metrics) -> list[tuple[str, dict[str, float]]]:
    """Table rows in report order: (metric name, model -> value for the models that have it).

    Examples:
        >>> metric_rows({"a": {"nmi": 0.5, "precision_at_1": 0.8}, "b": {"nmi": 0.6}})
        [('precision_at_1', {'a': 0.8}), ('nmi', {'a': 0.5, 'b': 0.6})]
    """
    return [
        (name, {m: v[name] for m, v in metrics.items() if name in v})
        for name in ordered_metric_names(metrics)
    ]


def summary_sentence(metrics: Metrics) -> str:
    """Says, in plain text, which model is best on the headline metrics.

    Headline metrics are MAP@R, P@1, the kNN top-1 presets and the policy accuracy, whichever
    are present (the first three table rows otherwise). With several models only metrics that
    at least two of them report are compared.

    Examples:
        >>> summary_sentence({"a": {"precision_at_1": 0.5}, "b": {"precision_at_1": 0.7}})
        'b is best on P@1 0.7000 vs 0.5000.'
    """
    rows = dict(metric_rows(metrics))
    if len(metrics) > 1:
        rows = {name: row for name, row in rows.items() if len(row) > 1}
        if not rows:
            return "The models report no metric in common, so none is compared."
    heads = [m for m in HEADLINE_METRICS if m in rows] or list(rows)[:3]
    if len(metrics) == 1:
        model = next(iter(metrics))
        parts = [f"{metric_display_name(h)} {format_value(rows[h][model])}" for h in heads]
        return f"{model}: {join_words(parts)}."
    groups: dict[tuple[str, ...], list[str]] = {}
    for head in heads:
        best = best_models(head, rows[head])
        groups.setdefault(() if len(best) == len(rows[head]) else tuple(best), []).append(head)
    clauses = []
    for winners, names in groups.items():
        listed = join_words([_headline_with_values(n, rows[n], winners) for n in names])
        if not winners:
            clauses.append(f"all models tie on {listed}")
        elif len(winners) > 1:
            clauses.append(f"{join_words(winners)} tie for best on {listed}")
        elif len(groups) == 1 and len(names) > 1:
            clauses.append(f"{winners[0]} is best on every headline metric: {listed}")
        else:
            clauses.append(f"{winners[0]} is best on {listed}")
    text = "; ".join(clauses) + "."
    return "A" + text[1:] if text.startswith("all models") else text


def _headline_with_values(name: str, row: Mapping[str, float], winners: Sequence[str]) -> str:
    label = metric_display_name(name)
    best = row[best_models(name, row)[0]]
    if len(winners) == 1 and len(row) == 2:
        other = next(v for m, v in row.items() if m != winners[0])
        return f"{label} {format_value(best)} vs {format_value(other)}"
    return f"{label} {format_value(best)}"


def _html_value_cells(row: Mapping[str, float], models: Sequence[str], best: set[str]) -> str:
    """One cell per model: bold when among ``best``, a dash when the model lacks the value."""
    return "".join(
        (
            f'<td class="best">{format_value(row[m])}</td>'
            if m in best
            else f"<td>{format_value(row[m])}</td>"
        )
        if m in row
        else '<td class="missing">–</td>'
        for m in models
    )


def html_delta_cell(name: str, row: Mapping[Any, float], first: Any, last: Any) -> str:
    """The Δ cell (``last`` minus ``first``), coloured by whether it is an improvement.

    Examples:
        >>> html_delta_cell("precision_at_1", {"a": 0.5, "b": 0.75}, "a", "b")
        '<td class="delta better">+0.2500</td>'
    """
    if first not in row or last not in row:
        return '<td class="delta missing">–</td>'
    delta = row[last] - row[first]
    return f'<td class="delta {delta_class(name, delta)}">{format_delta(delta)}</td>'


def _html_table(css_class: str, first_header: str, models: Sequence[str], body: str) -> str:
    head = "".join(f"<th>{html.escape(m)}</th>" for m in models)
    if len(models) >= 2:
        head += f'<th title="{html.escape(models[-1])} minus {html.escape(models[0])}">Δ</th>'
    return (
        f'<table class="{css_class}"><thead><tr><th>{first_header}</th>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )


def html_metric_table(metrics: Metrics) -> str:
    """The metric table as HTML: a row per metric, a column per model, bold best values.

    Examples:
        >>> html_metric_table({"a": {"nmi": 0.5}}).count("<tr>")
        2
    """
    models = list(metrics)
    with_delta = len(models) >= 2
    body = []
    for name, row in metric_rows(metrics):
        best = set(best_models(name, row)) if with_delta and len(row) > 1 else set()
        cells = _html_value_cells(row, models, best)
        if with_delta:
            cells += html_delta_cell(name, row, models[0], models[-1])
        label = html.escape(metric_display_name(name))
        body.append(f'<tr><th scope="row" title="{html.escape(name)}">{label}</th>{cells}</tr>')
    return _html_table("metrics", "metric", models, "".join(body))


def html_per_class_table(per_class: PerClass, metric: str, class_names: ClassNames) -> str:
    """One per-class metric as an HTML table: a row per class, a column per model.

    Examples:
        >>> html_per_class_table({"a": {"nmi": {0: 0.5}}}, "nmi", ["cat"]).count("cat")
        1
    """
    models = [m for m in per_class if metric in per_class[m]]
    classes = sorted({int(c) for m in models for c in per_class[m][metric]})
    body = []
    for c in classes:
        row = {m: per_class[m][metric][c] for m in models if c in per_class[m][metric]}
        cells = _html_value_cells(row, models, set())
        if len(models) >= 2:
            cells += html_delta_cell(metric, row, models[0], models[-1])
        name = html.escape(class_name(c, class_names))
        body.append(f'<tr><th scope="row">{name}</th>{cells}</tr>')
    return _html_table("metrics compact", "class", models, "".join(body))


def md_metric_table(metrics: Metrics) -> str:
    """The metric table as Markdown (values only; no bold or colour).

    Examples:
        >>> print(md_metric_table({"a": {"precision_at_1": 0.5}}))
        | metric | a |
        |---|---:|
        | P@1 | 0.5000 |
    """
    models = list(metrics)
    header = ["metric", *models] + (["Δ"] if len(models) >= 2 else [])
    lines = [
        "| " + " | ".join(md_escape(h) for h in header) + " |",
        "|" + "---|" + "---:|" * (len(header) - 1),
    ]
    for name, row in metric_rows(metrics):
        cells = [format_value(row[m]) if m in row else "–" for m in models]
        if len(models) >= 2:
            has_both = models[0] in row and models[-1] in row
            cells.append(format_delta(row[models[-1]] - row[models[0]]) if has_both else "–")
        lines.append(f"| {md_escape(metric_display_name(name))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
