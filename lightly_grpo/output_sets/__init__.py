"""Predefined output sets: the candidate outputs a representation policy chooses among.

See :mod:`lightly_grpo.output_sets.base` for the interface a new output set implements.
"""

from __future__ import annotations

from lightly_grpo.output_sets.base import (
    KeyedOutputSet,
    OutputGroup,
    OutputSet,
    output_set_from_config,
    register_output_set,
    sample_group,
)
from lightly_grpo.output_sets.class_prototypes import ClassPrototypes
from lightly_grpo.output_sets.kmeans_prototypes import KMeansPrototypes
from lightly_grpo.output_sets.neighbors import NeighborOutputSet, in_batch_candidates
from lightly_grpo.output_sets.refresh import MineFromOutputSet, OutputSetRefresh, embed_bank

__all__ = [
    "ClassPrototypes",
    "KMeansPrototypes",
    "KeyedOutputSet",
    "MineFromOutputSet",
    "NeighborOutputSet",
    "OutputGroup",
    "OutputSet",
    "OutputSetRefresh",
    "embed_bank",
    "in_batch_candidates",
    "output_set_from_config",
    "register_output_set",
    "sample_group",
]
