"""SimCLR pretraining; kept for imports, the recipe lives in :mod:`lightly_grpo.pretrain.simclr`.

Examples:
    >>> from lightly_grpo.simclr import SimCLRModule
    >>> SimCLRModule.__module__
    'lightly_grpo.pretrain.simclr'
"""

from __future__ import annotations

from lightly_grpo.pretrain.simclr import SimCLRMethod, SimCLRModule

__all__ = ["SimCLRMethod", "SimCLRModule"]
