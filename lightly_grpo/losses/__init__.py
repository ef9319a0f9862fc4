"""GRPO-RM losses: the low-level objective, the fused default path and the drop-in criteria.

- :class:`GRPORMLoss` (``grpo.py``): clipped group-relative surrogate over any logits and rewards.
- :func:`fused_accuracy_uniformity_loss` (``fused.py``): the default labeled objective, fused.
- :class:`GRPORMPolicyLoss` (``policy.py``): GRPO-RM over any output set.
- :class:`GRPORMClassificationLoss` (``classification.py``): with learnable class prototypes.
- :class:`GRPORMNeighborLoss` (``neighbor.py``): unlabeled, called like lightly's ``NTXentLoss``.
"""

from __future__ import annotations

from lightly_grpo.losses.classification import GRPORMClassificationLoss
from lightly_grpo.losses.fused import fused_accuracy_uniformity_loss
from lightly_grpo.losses.grpo import (
    GRPORMLoss,
    GRPOStats,
    cap_wrong_advantages,
    degenerate_groups,
    group_advantages,
)
from lightly_grpo.losses.neighbor import GRPORMNeighborLoss
from lightly_grpo.losses.policy import GRPORMPolicyLoss

__all__ = [
    "GRPORMClassificationLoss",
    "GRPORMLoss",
    "GRPORMNeighborLoss",
    "GRPORMPolicyLoss",
    "GRPOStats",
    "cap_wrong_advantages",
    "degenerate_groups",
    "fused_accuracy_uniformity_loss",
    "group_advantages",
]
