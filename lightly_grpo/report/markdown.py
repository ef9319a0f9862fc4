"""The Markdown report (``report.md``): title, summary, metric table, figures and notes.

It carries the same numbers and figures as the HTML page, for reading on a code host or in a
terminal; the per-class tables, the colours and the configuration stay in the HTML page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lightly_grpo.report.formatting import md_escape
from lightly_grpo.report.sections import MarkdownImage
from lightly_grpo.report.tables import md_metric_table


def markdown_report(
    title: str,
    generated: str,
    summary: str,
    metrics: Mapping[str, Mapping[str, float]],
    images: Sequence[MarkdownImage] = (),
    notes: Sequence[str] | None = None,
) -> str:
    """The text of ``report.md``.

    Args:
        title: Title of the report (plain text).
        generated: When the report was written.
        summary: The summary sentence.
        metrics: Model name -> metric name -> value.
        images: The figures, each under its own heading, in order.
        notes: Free-text remarks listed at the end.

    Returns:
        The Markdown text.

    Examples:
        >>> print(markdown_report("Run", "today", "a: P@1 0.5000.", {"a": {"precision_at_1": 0.5}}))
        # Run
        <BLANKLINE>
        _generated today_
        <BLANKLINE>
        a: P@1 0.5000.
        <BLANKLINE>
        ## Metrics
        <BLANKLINE>
        | metric | a |
        |---|---:|
        | P@1 | 0.5000 |
        <BLANKLINE>
    """
    lines = [
        f"# {md_escape(title)}",
        "",
        f"_generated {generated}_",
        "",
        md_escape(summary),
        "",
        "## Metrics",
        "",
        md_metric_table(metrics),
        "",
    ]
    if len(metrics) >= 2:
        first, last = next(iter(metrics)), list(metrics)[-1]
        lines += [md_escape(f"Δ = {last} − {first}."), ""]
    for image in images:
        caption = md_escape(image.caption)
        lines += [f"## {caption}", "", f"![{caption}]({image.rel})", ""]
        if image.note:
            lines += [md_escape(image.note), ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {md_escape(n)}" for n in notes] + [""]
    return "\n".join(lines)
