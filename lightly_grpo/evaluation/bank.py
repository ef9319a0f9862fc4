"""The standard embedding evaluation: kNN of a test split against a train bank, plus
leave-one-out retrieval within the test split, merged into one result."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightly_grpo.evaluation.evaluator import RetrievalEvaluator, RetrievalResult
from lightly_grpo.index import ArrayLike


def evaluate_against_bank(
    queries: ArrayLike,
    query_labels: ArrayLike | Sequence[int],
    bank: ArrayLike,
    bank_labels: ArrayLike | Sequence[int],
    evaluator: RetrievalEvaluator | None = None,
    progress: bool = False,
) -> RetrievalResult:
    """kNN accuracy of the queries against a labelled bank and retrieval within the queries.

    Two searches, as kNN and retrieval benchmarks report them: the kNN protocols vote over each
    query's nearest *bank* items (a train split), while P@1, R-precision, MAP@R, MAP, Recall@K
    and NMI/AMI rank the *other queries* (leave-one-out within the test split), so a retrieval
    score never depends on the size of the train split.

    Args:
        queries: (Q, D) query embeddings (the test split).
        query_labels: (Q,) integer labels of the queries.
        bank: (N, D) bank embeddings (the train split).
        bank_labels: (N,) integer labels of the bank.
        evaluator: Metric settings (default ``RetrievalEvaluator()``): its kNN protocols are
            evaluated against the bank, everything else leave-one-out within the queries.
        progress: Show tqdm bars while searching (also on when the evaluator's ``progress`` is).

    Returns:
        One :class:`RetrievalResult`: ``knn_*`` metrics and per-class values from the bank
        search; every other metric, per-class value and the neighbours (indices into the
        queries) from the leave-one-out search. ``info["knn"]`` and ``info["leave_one_out"]``
        hold each search's own info, ``info["metric_sources"]`` maps each metric to
        ``"knn"`` or ``"leave_one_out"``.

    Raises:
        ValueError: As :meth:`RetrievalEvaluator.evaluate`, for either search.

    Examples:
        >>> import torch
        >>> x, y = torch.randn(400, 16), torch.arange(400) % 4
        >>> ev = RetrievalEvaluator(knn_protocols=("dino",), nmi=False)
        >>> result = evaluate_against_bank(x[:100], y[:100], x[100:], y[100:], ev)
        >>> result.info["metric_sources"]["knn_top1_dino"], bool(result.neighbors.max() < 100)
        ('knn', True)
    """
    ev = evaluator if evaluator is not None else RetrievalEvaluator()
    progress = progress or ev.progress
    merged: dict[str, float] = {}
    per_class: dict[str, dict[int, float]] = {}
    sources: dict[str, str] = {}
    info: dict[str, Any] = {}
    if ev.protocols:
        knn = ev.replace(retrieval=False, nmi=False, progress=progress).evaluate(
            queries, query_labels, bank, bank_labels
        )
        merged.update(knn.metrics)
        per_class.update(knn.per_class)
        sources.update(dict.fromkeys(knn.metrics, "knn"))
        info["knn"] = knn.info
    loo = ev.replace(knn_protocols=(), progress=progress).evaluate(queries, query_labels)
    merged.update(loo.metrics)
    per_class = {**loo.per_class, **per_class}
    sources.update(dict.fromkeys(loo.metrics, "leave_one_out"))
    info["leave_one_out"] = loo.info
    info["metric_sources"] = sources
    # Report order: the evaluator's own (retrieval, kNN, clusters).
    order = {name: i for i, name in enumerate(ev.metric_names())}
    metrics = dict(sorted(merged.items(), key=lambda item: order.get(item[0], len(order))))
    return RetrievalResult(
        metrics=metrics,
        per_class=per_class,
        neighbors=loo.neighbors,
        neighbor_labels=loo.neighbor_labels,
        neighbor_similarities=loo.neighbor_similarities,
        info=info,
    )
