"""Plain-text formatting shared by the report's figures, tables and pages.

Class labels, numbers and deltas are written the same way in the HTML, the Markdown and the
figures; the helpers here are the single place that decides how.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence

#: Class names indexed by label: a sequence, a mapping, or None to show the labels themselves.
ClassNames = Sequence[str] | Mapping[int, str] | None
#: Model name -> metric name -> class label -> value.
PerClass = Mapping[str, Mapping[str, Mapping[int, float]]]


def class_name(label: int, class_names: ClassNames) -> str:
    """The name of a class label, or the label itself when no name is known.

    Examples:
        >>> class_name(1, ["cat", "dog"]), class_name(7, ["cat", "dog"]), class_name(3, {3: "x"})
        ('dog', '7', 'x')
    """
    if class_names is None:
        return str(label)
    if isinstance(class_names, Mapping):
        return str(class_names.get(label, label))
    if 0 <= label < len(class_names):
        return str(class_names[label])
    return str(label)


def short_label(label: int, class_names: ClassNames) -> str:
    """:func:`class_name` cut to 14 characters, for labels under small images and bars.

    Examples:
        >>> short_label(0, ["a very long class name"])
        'a very long c…'
    """
    text = class_name(label, class_names)
    return text if len(text) <= 14 else text[:13] + "…"


def format_value(value: float) -> str:
    """A metric value with four decimals, or four significant digits when very small or large.

    Examples:
        >>> format_value(0.5), format_value(123456.0), format_value(1e-5)
        ('0.5000', '1.235e+05', '1e-05')
    """
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.4f}"
    return f"{value:.4g}"


def format_delta(delta: float) -> str:
    """A signed difference; ``±0`` when the values are equal.

    Examples:
        >>> format_delta(0.0), format_delta(-0.1), format_delta(3e-6)
        ('±0', '-0.1000', '+3.00e-06')
    """
    return "±0" if delta == 0 else f"{delta:+.4f}" if abs(delta) >= 1e-4 else f"{delta:+.2e}"


def slug(name: str, taken: set[str]) -> str:
    """A file-name-safe form of ``name`` not yet in ``taken`` (which it is added to).

    Examples:
        >>> taken = set()
        >>> slug("SimCLR backbone", taken), slug("simclr backbone", taken)
        ('simclr-backbone', 'simclr-backbone-2')
    """
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-").lower() or "model"
    out, i = base, 2
    while out in taken:
        out, i = f"{base}-{i}", i + 1
    taken.add(out)
    return out


def join_words(items: Sequence[str]) -> str:
    """Joins words as English does: ``a``, ``a and b``, ``a, b and c``.

    Examples:
        >>> join_words(["MAP@R", "P@1", "NMI"])
        'MAP@R, P@1 and NMI'
    """
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def md_escape(text: str) -> str:
    """Escapes user text for a Markdown line or table cell.

    Examples:
        >>> md_escape("a | <b>")
        'a \\\\| &lt;b&gt;'
    """
    # Markdown renders inline HTML, so user text is HTML-escaped here too.
    text = html.escape(text, quote=False).replace("\n", " ")
    return re.sub(r"([|\[\]])", r"\\\1", text)
