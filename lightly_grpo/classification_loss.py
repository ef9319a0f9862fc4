"""Kept for compatibility: the loss now lives in :mod:`lightly_grpo.losses.classification`."""

from __future__ import annotations

from lightly_grpo.losses.classification import GRPORMClassificationLoss

__all__ = ["GRPORMClassificationLoss"]
