"""kNN protocols and the weighted kNN vote of lightly's ``knn_predict``."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from lightly_grpo.evaluation.metrics import KNN_PROTOCOLS

# Bytes one kNN vote sub-batch (B x k x C float32, twice) may use.
_VOTE_MEMORY_BYTES = 64 * 2**20


def parse_protocol(spec: str | tuple[int, float]) -> tuple[str, int, float]:
    """``(name, k, T)`` of a protocol name from :data:`KNN_PROTOCOLS` or a ``(k, T)`` tuple.

    A tuple is named ``k{k}_t{T}``, the suffix of its metric keys.

    Raises:
        ValueError: On an unknown name or a tuple that is not ``(k >= 1, T > 0)``.

    Examples:
        >>> parse_protocol("dino"), parse_protocol((7, 0.5))
        (('dino', 20, 0.07), ('k7_t0.5', 7, 0.5))
    """
    if isinstance(spec, str):
        if spec not in KNN_PROTOCOLS:
            raise ValueError(
                f"unknown kNN protocol {spec!r}; use one of {sorted(KNN_PROTOCOLS)} or a "
                "(k, T) tuple"
            )
        k, t = KNN_PROTOCOLS[spec]
        return spec, k, t
    if (
        not isinstance(spec, (tuple, list))
        or len(spec) != 2
        or isinstance(spec[0], bool)
        or not isinstance(spec[0], int)
        or spec[0] < 1
        or not isinstance(spec[1], (int, float))
        or not spec[1] > 0
    ):
        raise ValueError(f"a kNN protocol must be a name or a (k >= 1, T > 0) tuple, got {spec!r}")
    k, t = int(spec[0]), float(spec[1])
    return f"k{k}_t{t:g}", k, t


def knn_vote(similarities: Tensor, labels: Tensor, num_classes: int, temperature: float) -> Tensor:
    """Weighted kNN vote with the operations of lightly's ``knn_predict``.

    Args:
        similarities: (B, k) similarities of each query's k nearest neighbours.
        labels: (B, k) int64 class indices (0..num_classes-1) of those neighbours.
        num_classes: Number of classes C.
        temperature: T in the weights ``exp(sim / T)``.

    Returns:
        (B, C) class indices sorted by summed weight, best first (``knn_predict``'s output).

    Examples:
        >>> knn_vote(torch.tensor([[0.9, 0.5]]), torch.tensor([[1, 0]]), 2, 0.1)[:, 0]
        tensor([1])
    """
    b, k = similarities.shape
    # Same ops as lightly.utils.benchmarking.knn_predict after its topk, so scores and the
    # argsort tie order are identical.
    sim_weight = (similarities / temperature).exp()
    one_hot = torch.zeros(b * k, num_classes, device=labels.device)
    one_hot = one_hot.scatter(dim=-1, index=labels.reshape(-1, 1), value=1.0)
    pred_scores = torch.sum(one_hot.view(b, -1, num_classes) * sim_weight.unsqueeze(dim=-1), dim=1)
    return pred_scores.argsort(dim=-1, descending=True)


def knn_votes(
    similarities: Tensor, labels: Tensor, num_classes: int, temperature: float
) -> Iterator[tuple[slice, Tensor]]:
    """:func:`knn_vote` in sub-batches that keep its (B, k, C) one-hot within 64 MiB.

    Yields:
        ``(rows, predictions)`` for the queries ``rows`` of the batch.

    Examples:
        >>> sims, labels = torch.rand(10, 3), torch.randint(0, 4, (10, 3))
        >>> sum(len(pred) for _, pred in knn_votes(sims, labels, 4, 0.1))
        10
    """
    b, k = similarities.shape
    step = max(1, _VOTE_MEMORY_BYTES // (8 * k * num_classes))
    for s in range(0, b, step):
        rows = slice(s, s + step)
        yield rows, knn_vote(similarities[rows], labels[rows], num_classes, temperature)
