"""Checks and cleaning of the plain data handed to the report (metrics, per-class values).

Values are turned into finite Python floats once, on the way in, so that ``metrics.json`` is
strict JSON and every table and figure can rely on them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from lightly_grpo.report.formatting import PerClass


def as_float(value: Any, where: str) -> float:
    """``float(value)``, or a ``ValueError`` that says where the value came from.

    Examples:
        >>> as_float("0.5", "metrics['a']['p']")
        0.5
    """
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where} must be a number, got {value!r}") from err


def finite_float(value: Any, where: str) -> float:
    """:func:`as_float` that also rejects NaN and infinity.

    Examples:
        >>> finite_float(float("nan"), "x")
        Traceback (most recent call last):
        ...
        ValueError: x is not finite: nan
    """
    number = as_float(value, where)
    if not math.isfinite(number):
        raise ValueError(f"{where} is not finite: {number}")
    return number


def clean_metrics(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Model name -> metric name -> finite float; at least one model, none without metrics.

    Examples:
        >>> clean_metrics({"a": {"precision_at_1": 1}})
        {'a': {'precision_at_1': 1.0}}
    """
    if not metrics:
        raise ValueError("metrics must name at least one model, got an empty mapping")
    clean: dict[str, dict[str, float]] = {}
    for model, values in metrics.items():
        if not values:
            raise ValueError(f"metrics for model {model!r} are empty")
        clean[str(model)] = {
            str(k): finite_float(v, f"metrics[{model!r}][{k!r}]") for k, v in values.items()
        }
    return clean


def clean_per_class(per_class: PerClass) -> dict[str, dict[str, dict[int, float]]]:
    """Model name -> metric name -> integer class label -> finite float.

    Examples:
        >>> clean_per_class({"a": {"precision_at_1": {"0": 0.5}}})
        {'a': {'precision_at_1': {0: 0.5}}}
    """
    clean: dict[str, dict[str, dict[int, float]]] = {}
    for model, by_metric in per_class.items():
        clean[str(model)] = {
            str(metric): {
                int(c): finite_float(v, f"per_class[{model!r}][{metric!r}][{c!r}]")
                for c, v in by_class.items()
            }
            for metric, by_class in by_metric.items()
        }
    return clean
