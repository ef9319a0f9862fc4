"""What every chain runs on: the Lightning Trainer, its per-epoch history, the device.

Devices are resolved by Lightning (the trainer's strategy, or a ``Fabric`` for the evaluation
that trains nothing), so ``"auto"`` means what it means to Lightning.
"""

from __future__ import annotations

import logging
import os
import random
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric import Fabric
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from lightly_grpo.chains.config import TrainerConfig

logger = logging.getLogger(__name__)


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

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(row) for row in self.rows]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [dict(row) for row in state_dict.get("rows", [])]


class RNGStates(pl.Callback):
    """Saves the Python, numpy and torch random states in every checkpoint and restores them on
    resume, so the augmentations (and sampled groups) after a resume are the ones an
    uninterrupted run draws. The state is taken when the checkpoint is written (the end of an
    epoch), which is where a resumed run continues."""

    def state_dict(self) -> dict[str, Any]:
        # Plain ints, lists and tensors only: checkpoints load with weights_only=True.
        name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
        return {
            "python": random.getstate(),
            "numpy": [name, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(gauss)],
            "torch": torch.get_rng_state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        version, internal, gauss = state_dict["python"]
        random.setstate((version, tuple(internal), gauss))
        name, keys, pos, has_gauss, cached = state_dict["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state_dict["torch"])


class StepOfFailure(pl.Callback):
    """Names the training step at which a run failed (a NaN in the data or the model, a bad
    batch): the exception gets a note ``failed at global step N (epoch E, batch B)`` and the
    message is logged. Nothing is saved on the way out, so the last checkpoint on disk stays the
    last good one (Lightning writes checkpoints only at the end of a completed epoch)."""

    def __init__(self) -> None:
        self.batch_idx = -1

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.batch_idx = batch_idx

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        where = (
            f"failed at global step {trainer.global_step} (epoch {trainer.current_epoch}, "
            f"batch {self.batch_idx})"
        )
        if trainer.checkpoint_callback is not None:
            folder = getattr(trainer.checkpoint_callback, "dirpath", None)
            where += f"; the checkpoints in {folder} are from before this step"
        if hasattr(exception, "add_note"):  # Python >= 3.11: printed with the traceback
            exception.add_note(where)
        logger.error("training %s: %s", where, exception)


def latest_checkpoint(out_dir: str | os.PathLike[str]) -> Path:
    """The checkpoint an interrupted run in ``out_dir`` continues from: ``checkpoints/last.ckpt``,
    or (when a crash hit between replacing the epoch file and relinking it) the newest epoch file.

    Raises:
        FileNotFoundError: When the run folder holds no checkpoint.
    """
    folder = Path(out_dir) / "checkpoints"
    last = folder / "last.ckpt"
    if last.is_file():  # follows the link
        return last.resolve()
    epochs = sorted(folder.glob("epoch=*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not epochs:
        raise FileNotFoundError(
            f"nothing to resume: no checkpoint in '{folder}' (run without --resume to start)"
        )
    return epochs[-1]


def resume_from(resume: bool, out_dir: str | os.PathLike[str]) -> str | None:
    """The checkpoint to pass to ``trainer.fit(ckpt_path=...)``: the run's latest one when
    ``resume`` is set and one exists (a run killed before its first epoch ended starts over,
    with a warning), else None."""
    if not resume:
        return None
    try:
        return str(latest_checkpoint(out_dir))
    except FileNotFoundError as error:
        warnings.warn(f"{error}; starting from the beginning", stacklevel=2)
        return None


def check_not_posttrained(path: str | os.PathLike[str]) -> None:
    """Refuses a post-training checkpoint as the *input* of a post-training run.

    Passing a run's own ``last.ckpt`` as the pretrained checkpoint would restart from scratch
    (new prototypes, optimizer and schedule) and report the partly trained model as the
    pretrained one; ``--resume`` is what continues a run.
    """
    path = Path(path)
    if path.suffix != ".ckpt" or not path.is_file():
        return
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - load_backbone reports unreadable files by name
        return
    hparams = state.get("hyper_parameters", {}) if isinstance(state, dict) else {}
    if isinstance(hparams, dict) and "lr_backbone" in hparams:
        raise ValueError(
            f"'{path}' is a post-training checkpoint, not a pretrained one: to continue that run "
            "pass --resume with its --out folder; to post-train its result, pass its backbone.pt"
        )


def make_trainer(
    cfg: TrainerConfig,
    out_dir: Path,
    epochs: int,
    callbacks: Sequence[pl.Callback] = (),
    use_distributed_sampler: bool = True,
    max_steps: int = -1,
) -> pl.Trainer:
    """A Trainer writing checkpoints (``out_dir/checkpoints``) and a CSV log (``out_dir/logs``).

    ``epochs`` and ``max_steps`` are Lightning's ``max_epochs`` and ``max_steps`` (-1: no limit).
    ``use_distributed_sampler``: Lightning's flag; False for training loaders that shard
    themselves under DDP (a :class:`~lightly_grpo.data.NeighborBatchSampler`), which Lightning
    would otherwise try to rebuild around its ``DistributedSampler``.

    One checkpoint file is kept on disk, the latest epoch's; ``last.ckpt`` is a link to it
    rather than a second copy (a post-training checkpoint holds the policy, the frozen reference
    and the optimizer state: three backbones' worth of bytes). Lightning writes each file to a
    temporary name and renames it, so a crash while saving never corrupts the previous one.

    Examples:
        >>> import tempfile
        >>> trainer = make_trainer(TrainerConfig(accelerator="cpu"), Path(tempfile.mkdtemp()), 1)
        >>> trainer.strategy.root_device
        device(type='cpu')
    """
    checkpoints = ModelCheckpoint(dirpath=out_dir / "checkpoints", save_last="link")
    return pl.Trainer(
        max_epochs=epochs,
        max_steps=max_steps,
        # Handed to Lightning unchanged (it parses "2", "auto", "-1", "0,1").
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=cfg.precision,  # type: ignore[arg-type]
        default_root_dir=str(out_dir),
        logger=CSVLogger(str(out_dir), name="logs"),  # kept for users: a plain CSV of every step
        callbacks=[checkpoints, RNGStates(), StepOfFailure(), *callbacks],
        enable_progress_bar=cfg.progress,
        enable_model_summary=False,
        log_every_n_steps=5,
        num_sanity_val_steps=0,
        use_distributed_sampler=use_distributed_sampler,
    )


def save_final_checkpoint(trainer: pl.Trainer, path: str | os.PathLike[str]) -> Path:
    """Writes the trainer's final state to ``path``, atomically.

    When the trainer's ``ModelCheckpoint`` already saved the state of the last step, ``path``
    becomes a hard link to that file (no second copy on disk; Lightning replaces checkpoint
    files by rename, so later saves never change the linked bytes). Otherwise, or where the file
    system has no hard links, the state is saved to a temporary file renamed onto ``path``.

    Examples:
        >>> trainer = make_trainer(TrainerConfig(), Path("runs/x"), 1)  # doctest: +SKIP
        >>> trainer.fit(module, loader)  # doctest: +SKIP
        >>> save_final_checkpoint(trainer, "runs/x/final.ckpt")  # doctest: +SKIP
    """
    path = Path(path)
    if trainer.world_size > 1:
        # Under DDP Lightning's save is collective (every rank enters it, rank 0 writes
        # atomically); a link decided per rank could leave the ranks out of step.
        trainer.save_checkpoint(path)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.unlink(missing_ok=True)
    saved = _checkpoint_of_last_step(trainer)
    try:
        if saved is None:
            raise OSError("no checkpoint of the last step to link")
        os.link(saved, partial)
    except OSError:
        trainer.save_checkpoint(partial)
    os.replace(partial, path)
    return path


def _checkpoint_of_last_step(trainer: pl.Trainer) -> Path | None:
    callback = trainer.checkpoint_callback
    # Lightning's path of its most recent save (not best_model_path, which with a monitor can
    # be an older, better-scoring file).
    latest = getattr(callback, "_last_checkpoint_saved", "") if callback else ""
    if not isinstance(callback, ModelCheckpoint) or not latest:
        return None
    # Only a file saved at the trainer's current step holds the final state.
    saved = Path(latest).resolve()
    if (
        not saved.is_file()
        or getattr(callback, "_last_global_step_saved", None) != trainer.global_step
    ):
        return None
    return saved


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


__all__ = [
    "EpochHistory",
    "RNGStates",
    "StepOfFailure",
    "check_not_posttrained",
    "latest_checkpoint",
    "resume_from",
    "make_trainer",
    "prepare_run",
    "resolve_device",
    "save_final_checkpoint",
]
