"""The chains' runtime: the per-epoch history from a real Lightning fit, device lookup, the
embedding loop."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightly_grpo.chains import EpochHistory, TrainerConfig, make_trainer
from lightly_grpo.chains.runtime import resolve_device, save_final_checkpoint
from lightly_grpo.data import make_loader
from lightly_grpo.embedding import embed_loader


def _csv_history_rows(metrics_csv: Path) -> list[dict[str, float]]:
    """Per-epoch rows of a Lightning ``CSVLogger`` file: ``train/*_epoch`` and ``val/*`` columns.

    An independent reading of the log for :class:`EpochHistory` to be checked against.
    """
    rows: dict[int, dict[str, float]] = {}
    with open(metrics_csv, newline="") as handle:
        for record in csv.DictReader(handle):
            epoch = int(record["epoch"])
            row = rows.setdefault(epoch, {"epoch": float(epoch + 1)})
            for name, value in record.items():
                if value and "/" in name and not name.endswith("_step"):
                    row[name.removesuffix("_epoch")] = float(value)
    return [rows[epoch] for epoch in sorted(rows)]


class _Regression(pl.LightningModule):
    """Logs a per-step train metric (epoch mean too), a step-only one and a val metric."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x).squeeze(1), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True)
        self.log("lr_only_step", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", nn.functional.mse_loss(self.layer(x).squeeze(1), y))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_epoch_history_matches_the_csv_log(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64, 4), torch.randn(64))
    history = EpochHistory()
    trainer = make_trainer(TrainerConfig(accelerator="cpu", progress=False), tmp_path, 3, [history])
    trainer.fit(_Regression(), DataLoader(data, batch_size=8), DataLoader(data, batch_size=16))
    assert trainer.logger is not None and trainer.logger.log_dir is not None
    logged = _csv_history_rows(Path(trainer.logger.log_dir) / "metrics.csv")
    # the same epochs and the same epoch aggregates, this epoch's (not the previous one's)
    assert [row["epoch"] for row in history.rows] == [1.0, 2.0, 3.0]
    assert len(logged) == 3
    for ours, csv_row in zip(history.rows, logged, strict=True):
        assert set(ours) == {"epoch", "train/loss", "val/loss"}
        for key, value in csv_row.items():
            assert ours[key] == pytest.approx(value, rel=1e-6), key
    assert history.rows[0]["train/loss"] != history.rows[-1]["train/loss"]
    # One checkpoint file on disk; last.ckpt links to it instead of copying it.
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_symlink() and last.is_file()
    files = [p for p in (tmp_path / "checkpoints").iterdir() if not p.is_symlink()]
    assert [p.name for p in files] == ["epoch=2-step=24.ckpt"]


def test_final_checkpoint_is_a_hard_link_to_the_last_steps_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32, 4), torch.randn(32))
    trainer = make_trainer(TrainerConfig(accelerator="cpu", progress=False), tmp_path, 2)
    module = _Regression()
    trainer.fit(module, DataLoader(data, batch_size=8))
    final = save_final_checkpoint(trainer, tmp_path / "out" / "final.ckpt")
    saved = tmp_path / "checkpoints" / "epoch=1-step=8.ckpt"
    assert final.stat().st_ino == saved.stat().st_ino  # no second copy on disk
    state = torch.load(final, map_location="cpu", weights_only=True)
    assert state["global_step"] == trainer.global_step == 8
    assert torch.equal(state["state_dict"]["layer.weight"], module.layer.weight.detach())
    assert not list((tmp_path / "out").glob(".*partial"))

    # A trainer whose state no checkpoint file holds saves it afresh, replacing the final file.
    trainer2 = pl.Trainer(
        max_steps=1, enable_checkpointing=False, logger=False, enable_progress_bar=False
    )
    trainer2.fit(module, DataLoader(data, batch_size=8))
    final = save_final_checkpoint(trainer2, final)
    assert final.stat().st_ino != saved.stat().st_ino
    assert torch.load(final, map_location="cpu", weights_only=True)["global_step"] == 1
    assert torch.load(saved, map_location="cpu", weights_only=True)["global_step"] == 8


def test_devices_are_resolved_by_lightning() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(ValueError, match="'no-such-device'"):
        resolve_device("no-such-device")


def test_embed_loader_keeps_the_order_and_normalises() -> None:
    dataset = TensorDataset(torch.randn(10, 3), torch.arange(10))
    loader = make_loader(dataset, 4, shuffle=False)
    embeddings, labels = embed_loader(
        nn.Identity(), loader, torch.device("cpu"), progress=True, desc="test"
    )
    assert labels is not None
    assert embeddings.shape == (10, 3) and labels.tolist() == list(range(10))
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(10))


def test_final_checkpoint_links_the_latest_save_not_the_best_one(tmp_path: Path) -> None:
    from pytorch_lightning.callbacks import ModelCheckpoint

    class _Scored(_Regression):
        def on_train_epoch_end(self) -> None:
            # epoch 0 scores best; the final epoch is not the best
            self.log("score", torch.tensor([3.0, 1.0, 2.0][self.current_epoch]))

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(16, 4), torch.randn(16))
    callback = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="score", mode="max", save_top_k=2)
    trainer = pl.Trainer(
        max_epochs=3,
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    module = _Scored()
    trainer.fit(module, DataLoader(data, batch_size=8))
    assert Path(callback.best_model_path).name.startswith("epoch=0")
    final = save_final_checkpoint(trainer, tmp_path / "final.ckpt")
    state = torch.load(final, map_location="cpu", weights_only=True)
    assert state["global_step"] == trainer.global_step == 6
    assert torch.equal(state["state_dict"]["layer.weight"], module.layer.weight.detach())


class _NaNAt(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Labeled 4x4 images; the image ``bad`` turns NaN from epoch ``from_epoch`` on."""

    def __init__(self, bad: int, from_epoch: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(16, 1, 4, 4, generator=g), torch.arange(16) % 2
        self.bad, self.from_epoch, self.epoch = bad, from_epoch, 0

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        poisoned = i == self.bad and self.epoch >= self.from_epoch
        return (torch.full_like(self.x[i], float("nan")) if poisoned else self.x[i]), self.y[i]


class _Epochs(pl.Callback):
    def __init__(self, dataset: _NaNAt) -> None:
        self.dataset = dataset

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.dataset.epoch = trainer.current_epoch


def test_a_nan_in_training_stops_with_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path: Path,
) -> None:
    from lightly_grpo.losses import GRPORMClassificationLoss
    from lightly_grpo.stage import GRPORMStage

    torch.manual_seed(0)
    stage = GRPORMStage(
        nn.Sequential(nn.Flatten(), nn.Linear(16, 4)), GRPORMClassificationLoss(2, 4)
    )
    dataset = _NaNAt(bad=5, from_epoch=1)
    loader = DataLoader(dataset, batch_size=4)  # 4 steps per epoch; item 5 is in batch 1
    trainer = make_trainer(TrainerConfig(accelerator="cpu", progress=False), tmp_path, 3)
    trainer.callbacks.append(_Epochs(dataset))  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="NaN") as raised:
        trainer.fit(stage, loader)
    notes = " ".join(getattr(raised.value, "__notes__", []))
    assert "failed at global step 5 (epoch 1, batch 1)" in notes
    last = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["epoch"] == 0 and checkpoint["global_step"] == 4  # the good epoch
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())
