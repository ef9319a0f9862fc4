"""What every chain runs on: the Lightning Trainer, its per-epoch history, the device.

Devices are resolved by Lightning (the trainer's strategy, or a ``Fabric`` for the evaluation
that trains nothing), so ``"auto"`` means what it means to Lightning.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric import Fabric
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from lightly_grpo.chains.config import TrainerConfig


class EpochHistory(pl.Callback):
    """Records each training epoch's logged ``split/name`` metrics, for the report's curves.

    Lightning computes the epoch aggregates before any ``on_train_epoch_end`` hook runs, so
    ``trainer.callback_metrics`` then holds this epoch's ``train/*`` means (under both
    ``train/x`` and ``train/x_epoch``) and the ``val/*`` values of the validation that ran at the
    end of the epoch. Step-only metrics and names without a ``/`` (progress-bar values) are left
    out.

    Attributes:
        rows: One dict per epoch: ``{"epoch": 1.0, "train/accuracy": ..., "val/accuracy": ...}``.

    Examples:
        >>> history = EpochHistory()
        >>> history.rows
        []
    """

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        row = {"epoch": float(trainer.current_epoch + 1)}
        for name, value in trainer.callback_metrics.items():
            if "/" in name and not name.endswith("_step"):
                row[name.removesuffix("_epoch")] = float(value)
        self.rows.append(row)


def make_trainer(
    cfg: TrainerConfig, out_dir: Path, epochs: int, callbacks: Sequence[pl.Callback] = ()
) -> pl.Trainer:
    """A Trainer writing checkpoints (``out_dir/checkpoints``) and a CSV log (``out_dir/logs``).

    Examples:
        >>> import tempfile
        >>> trainer = make_trainer(TrainerConfig(accelerator="cpu"), Path(tempfile.mkdtemp()), 1)
        >>> trainer.strategy.root_device
        device(type='cpu')
    """
    checkpoints = ModelCheckpoint(dirpath=out_dir / "checkpoints", save_last=True)
    return pl.Trainer(
        max_epochs=epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        precision=cfg.precision,  # type: ignore[arg-type]
        default_root_dir=str(out_dir),
        logger=CSVLogger(str(out_dir), name="logs"),  # kept for users: a plain CSV of every step
        callbacks=[checkpoints, *callbacks],
        enable_progress_bar=cfg.progress,
        enable_model_summary=False,
        log_every_n_steps=5,
        num_sanity_val_steps=0,
    )


def resolve_device(name: str = "auto") -> torch.device:
    """The device Lightning picks for an accelerator name (``"auto"``, ``"cpu"``, ``"gpu"``, ...)
    or an indexed device such as ``"cuda:1"``.

    Raises:
        ValueError: For a name Lightning does not know.

    Examples:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    accelerator, _, index = name.partition(":")
    devices: Any = [int(index)] if index.isdigit() else 1
    try:
        return Fabric(accelerator=accelerator, devices=devices).device
    except (ValueError, RuntimeError, MisconfigurationException) as error:
        raise ValueError(f"unknown or unavailable device {name!r}: {error}") from error


def prepare_run(out_dir: str, seed: int) -> Path:
    """Creates the run folder and seeds every generator (workers included)."""
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(seed, workers=True)
    return path


__all__ = ["EpochHistory", "make_trainer", "prepare_run", "resolve_device"]
