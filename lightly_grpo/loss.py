"""Kept for compatibility: the losses now live in :mod:`lightly_grpo.losses`."""

from __future__ import annotations

from lightly_grpo.losses.fused import fused_accuracy_uniformity_loss
from lightly_grpo.losses.grpo import (
    GRPORMLoss,
    GRPOStats,
    cap_wrong_advantages,
    degenerate_groups,
    group_advantages,
)
from lightly_grpo.validation import check_finite

__all__ = [
    "GRPORMLoss",
    "GRPOStats",
    "cap_wrong_advantages",
    "check_finite",
    "degenerate_groups",
    "fused_accuracy_uniformity_loss",
    "group_advantages",
]
