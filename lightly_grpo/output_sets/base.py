"""What every output set hands to the loss: one group of candidate outputs per query."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class OutputGroup:
    """A group of G candidate outputs for each of B queries.

    Attributes:
        similarities: Cosine similarities <z_b, k_{b,i}>, shape (B, G), with gradient.
        correct: Boolean mask of the correct outputs, shape (B, G).
        indices: Which output of the full set each column is, shape (B, G) (int64).
    """

    similarities: Tensor
    correct: Tensor
    indices: Tensor


def sample_group(
    old_logits: Tensor, correct: Tensor, group_size: int, generator: torch.Generator | None = None
) -> Tensor:
    """Samples ``group_size`` outputs per row without replacement from softmax(old_logits).

    Gumbel top-k gives a sample without replacement in one ``topk``; the correct outputs are always
    kept (their keys get +inf) so the accuracy reward never vanishes from a group.

    Args:
        old_logits: Old-policy logits over the whole output set, shape (B, N), no gradient.
        correct: Boolean mask (B, N) of correct outputs.
        group_size: G, at most N.
        generator: Optional random generator.

    Returns:
        Indices of shape (B, G) into the output set.
    """
    num_outputs = old_logits.shape[1]
    if not 1 <= group_size <= num_outputs:
        raise ValueError(f"group_size must be in [1, {num_outputs}], got {group_size}")
    uniform = torch.rand(
        old_logits.shape, generator=generator, device=old_logits.device, dtype=old_logits.dtype
    )
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))
    keys = (old_logits + gumbel).masked_fill(correct, float("inf"))
    return keys.topk(group_size, dim=1).indices
