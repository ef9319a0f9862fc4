"""The HTML page of the report: its stylesheet, figure and section markup, and the page itself.

The page is one self-contained file without scripts; figures are linked PNGs in ``figures/``.
Every piece of user text (titles, model and class names, notes) is escaped here or by the caller.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

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


def html_figure(rel: str, caption: str, alt: str = "") -> str:
    """A linked image with a caption; ``caption`` is HTML (callers escape user text).

    ``alt`` is plain text and defaults to the caption without its tags.

    Examples:
        >>> html_figure("figures/a.png", "<b>A</b> map")
        '<figure><a href="figures/a.png"><img src="figures/a.png" alt="A map" loading="eager"></a><figcaption><b>A</b> map</figcaption></figure>'
    """  # noqa: E501
    src = html.escape(rel, quote=True)
    alt_text = html.escape(alt or re.sub(r"<[^>]+>", "", caption), quote=True)
    below = f"<figcaption>{caption}</figcaption>" if caption else ""
    return (
        f'<figure><a href="{src}"><img src="{src}" alt="{alt_text}" loading="eager"></a>'
        f"{below}</figure>"
    )


def figure_grid(items: Sequence[tuple[str, str]], css_class: str = "grid") -> str:
    """Figures side by side: ``items`` are (file name in ``figures/``, HTML caption).

    Examples:
        >>> figure_grid([("a.png", "A"), ("b.png", "B")]).count("<figure>")
        2
    """
    return (
        f'<div class="{css_class}">'
        + "".join(html_figure(f"figures/{name}", caption) for name, caption in items)
        + "</div>"
    )


def hint(text: str) -> str:
    """A muted explanatory paragraph; ``text`` is HTML.

    Examples:
        >>> hint("green = same label")
        '<p class="hint">green = same label</p>'
    """
    return f'<p class="hint">{text}</p>'


def html_page(
    title: str, generated: str, sections: Sequence[tuple[str, str, str]], summary: str
) -> str:
    """The whole page: title, a navigation bar, the summary sentence and the sections.

    Args:
        title: Page title (plain text).
        generated: When the report was written (plain text).
        sections: (anchor, heading, inner HTML) per section, in page order.
        summary: The summary sentence (plain text).

    Returns:
        The HTML document.

    Examples:
        >>> page = html_page("t", "now", [("metrics", "Metrics", "<p>x</p>")], "all good")
        >>> page.startswith("<!DOCTYPE html>"), '<a href="#metrics">Metrics</a>' in page
        (True, True)
    """
    nav = "".join(f'<a href="#{a}">{html.escape(h)}</a>' for a, h, _ in sections)
    body = "".join(
        f'<section id="{a}"><h2>{html.escape(h)}</h2>{inner}</section>' for a, h, inner in sections
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body><main>"
        f'<h1>{html.escape(title)}</h1><p class="meta">generated {html.escape(generated)}</p>'
        f'<nav>{nav}</nav><p class="summary">{html.escape(summary)}</p>{body}'
        "</main></body></html>\n"
    )
