"""A quiet CPU ``pl.Trainer`` fit of a few steps, for tests that need a real checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl


def fit_steps(
    module: pl.LightningModule,
    loader: Any,
    root: Path,
    steps: int,
    callbacks: list[pl.Callback] | None = None,
) -> pl.Trainer:
    """Fits ``module`` for ``steps`` optimizer steps on the CPU and returns the trainer."""
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=callbacks,
    )
    trainer.fit(module, loader)
    return trainer
