"""Display names, table order and the better direction of metrics and training curves.

How a metric is shown and whether a larger value of it is better are each decided by exactly one
function, :func:`metric_display_name` and :func:`higher_is_better`, so that every table, delta
cell, summary sentence and chart of the report agrees. Both ask the evaluation's metric registry
(:func:`lightly_grpo.evaluation.metrics.metric_spec`) first and fall back to the rules here only
for names it does not know: training curves and timings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightly_grpo.evaluation.metrics import MetricSpec

# Metrics the summary sentence compares models on, in order of importance.
HEADLINE_METRICS = (
    "mean_average_precision_at_r",
    "precision_at_1",
    "knn_top1_dino",
    "knn_top1_lightly",
    "classifier_accuracy",
)
# Table order for the evaluator's metrics; Recall@K follows by K, anything else in given order.
_METRIC_ORDER = (
    "mean_average_precision_at_r",
    "precision_at_1",
    "r_precision",
    "mean_average_precision",
    "knn_top1_dino",
    "knn_top5_dino",
    "knn_top1_lightly",
    "knn_top5_lightly",
    "classifier_accuracy",
    "ncm_accuracy",
)
# Substrings of metric names for which a smaller value is the better one.
_LOWER_IS_BETTER = ("loss", "error", "seconds", "time_s", "memory")
# Panel order of the training curves (keys without their "train/" or "val/" prefix).
_CURVE_ORDER = ("reward", "accuracy", "loss", "entropy", "clip_fraction", "degenerate_fraction")
_CURVE_NAMES = {
    "kl": "KL to reference",
    "accuracy": "Policy accuracy",
    "knn_top1": "kNN top-1 among the validation images (k=20, T=0.07)",
}


def _registered(name: str) -> MetricSpec | None:
    """The evaluation registry's spec of ``name``, or None for a name it does not know."""
    # Imported on use: the evaluation package pulls in scikit-learn and FAISS, which drawing a
    # report from plain numbers does not otherwise need.
    from lightly_grpo.evaluation.metrics import metric_spec

    return metric_spec(name)


def metric_display_name(name: str) -> str:
    """Returns the human-readable form of a metric name.

    Metrics the evaluation computes are named by its registry
    (:func:`lightly_grpo.evaluation.metrics.metric_spec`, so a kNN protocol reads as its k and
    temperature); unknown names are returned unchanged.

    Examples:
        >>> metric_display_name("knn_top1_dino")
        'kNN top-1 (k=20, T=0.07)'
        >>> metric_display_name("recall_at_4"), metric_display_name("ncm_accuracy")
        ('Recall@4', 'Nearest-class-mean accuracy')
    """
    spec = _registered(name)
    if spec is not None:
        return spec.display_name
    return name


def higher_is_better(name: str) -> bool:
    """Whether a larger value of a metric, a training curve or a timing is the better one.

    Metrics the evaluation computes follow its registry; of other names, losses, errors,
    timings and memory are better when smaller, everything else when larger.

    Examples:
        >>> higher_is_better("precision_at_1"), higher_is_better("train/loss")
        (True, False)
    """
    spec = _registered(name)
    if spec is not None:
        return spec.higher_is_better
    return not any(part in name.lower() for part in _LOWER_IS_BETTER)


def ordered_metric_names(metrics: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Every metric name any model reports, in the order of the report's tables.

    Examples:
        >>> ordered_metric_names({"a": {"nmi": 0.5, "recall_at_2": 0.9, "precision_at_1": 0.8}})
        ['precision_at_1', 'recall_at_2', 'nmi']
    """
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


def curve_display_name(name: str) -> str:
    """Title of a training-curve panel (a logged key without its ``train/`` or ``val/``).

    Examples:
        >>> curve_display_name("kl"), curve_display_name("clip_fraction")
        ('KL to reference', 'Clip fraction')
    """
    return _CURVE_NAMES.get(name, name.replace("_", " ").capitalize())


def curve_sort_key(name: str) -> tuple[int, str]:
    """Sort key of training-curve panels: the known ones in a fixed order, then by name.

    Examples:
        >>> sorted(["kl", "loss", "reward"], key=curve_sort_key)
        ['reward', 'loss', 'kl']
    """
    return (_CURVE_ORDER.index(name) if name in _CURVE_ORDER else len(_CURVE_ORDER), name)
