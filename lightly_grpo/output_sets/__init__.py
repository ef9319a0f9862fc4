"""Predefined output sets: the candidate outputs a representation policy chooses among."""

from __future__ import annotations

from lightly_grpo.output_sets.base import OutputGroup
from lightly_grpo.output_sets.class_prototypes import ClassPrototypes

__all__ = ["ClassPrototypes", "OutputGroup"]
