"""Learning-rate schedules shared by the training modules."""

from __future__ import annotations

from typing import Any

import torch
from lightly.utils.scheduler import CosineWarmupScheduler


def per_step_cosine(optimizer: torch.optim.Optimizer, total_steps: float, warmup_steps: int) -> Any:
    """Lightning ``lr_scheduler`` config: lightly's cosine schedule with warmup, stepped per batch.

    Examples:
        >>> optimizer = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())
        >>> per_step_cosine(optimizer, total_steps=100, warmup_steps=10)["interval"]
        'step'
    """
    total = max(1, int(total_steps))
    scheduler = CosineWarmupScheduler(
        optimizer, warmup_epochs=min(warmup_steps, total), max_epochs=total
    )
    return {"scheduler": scheduler, "interval": "step"}
