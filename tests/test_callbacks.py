from __future__ import annotations

from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import CSVLogger
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightly_grpo.callbacks import RetrievalEvaluationCallback
from lightly_grpo.evaluation import RetrievalEvaluator, evaluate_against_bank


class TinyEmbedder(pl.LightningModule):
    """Linear embedding of 8x8 digits trained with cross-entropy on a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU())
        self.head = nn.Linear(32, 10)
        self.modes_seen_in_embed: list[bool] = []
        self.grad_enabled_in_embed: list[bool] = []

    def embed(self, images: Tensor) -> Tensor:
        self.modes_seen_in_embed.append(self.training)
        self.grad_enabled_in_embed.append(torch.is_grad_enabled())
        return F.normalize(self.net(images), dim=1)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        assert self.training, "the callback must restore training mode"
        images, labels = batch
        loss = F.cross_entropy(self.head(self.net(images)), labels)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class ViewsDataset(Dataset[tuple[list[Tensor], int, str]]):
    """lightly-style items: (list of views, label, filename)."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[list[Tensor], int, str]:
        image = self.images[i]
        return [image, image.flip(-1)], int(self.labels[i]), f"{i}.png"


def _digits() -> tuple[Tensor, Tensor]:
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
    return images, torch.tensor(digits.target)


def _trainer(tmp_path: Any, callback: RetrievalEvaluationCallback, epochs: int) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=CSVLogger(tmp_path),
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )


def test_callback_logs_metrics_every_epoch_and_keeps_history(tmp_path: Any) -> None:
    images, labels = _digits()
    train = TensorDataset(images[:1400], labels[:1400])
    test = ViewsDataset(images[1400:], labels[1400:])
    callback = RetrievalEvaluationCallback(
        DataLoader(train, batch_size=256),
        DataLoader(test, batch_size=128),
        evaluator=RetrievalEvaluator(knn_protocols=("dino", (5, 0.1)), backend="torch"),
        on_start=True,
    )
    model = TinyEmbedder()
    trainer = _trainer(tmp_path, callback, epochs=2)
    trainer.fit(model, DataLoader(train, batch_size=64, shuffle=True))

    assert [entry["epoch"] for entry in callback.history] == [0.0, 1.0, 2.0]
    expected = {
        "val/knn_top1_dino",
        "val/knn_top5_dino",
        "val/knn_top1_k5_t0.1",
        "val/knn_top5_k5_t0.1",
        "val/precision_at_1",
        "val/r_precision",
        "val/mean_average_precision_at_r",
        "val/mean_average_precision",
        "val/recall_at_1",
        "val/recall_at_8",
        "val/nmi",
        "val/ami",
    }
    assert expected <= set(callback.history[-1])
    assert expected <= set(trainer.callback_metrics)
    assert trainer.callback_metrics["val/knn_top1_dino"].item() == pytest.approx(
        callback.history[-1]["val/knn_top1_dino"]
    )
    # Training helps: the trained embedding beats the random initial one.
    first, last = callback.history[0], callback.history[-1]
    assert last["val/mean_average_precision_at_r"] > first["val/mean_average_precision_at_r"]
    assert last["val/knn_top1_dino"] > 0.8
    # Embedding ran in eval mode without gradients; training mode was restored (see
    # training_step) after each of the 3 evaluations.
    assert model.modes_seen_in_embed and not any(model.modes_seen_in_embed)
    assert not any(model.grad_enabled_in_embed)
    logged = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "val/mean_average_precision_at_r" in logged.splitlines()[0]


def test_every_n_epochs_and_max_items(tmp_path: Any) -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(300, 8, 8, generator=g)
    labels = torch.arange(300) % 3
    data = TensorDataset(images, labels)
    callback = RetrievalEvaluationCallback(
        DataLoader(data, batch_size=50),
        DataLoader(data, batch_size=50),
        every_n_epochs=2,
        evaluator=RetrievalEvaluator(knn_protocols=((10, 0.1),), nmi=False, backend="torch"),
        max_items=120,
        prefix="eval_",
    )
    model = TinyEmbedder()
    model.head = nn.Linear(32, 3)
    trainer = _trainer(tmp_path, callback, epochs=3)
    trainer.fit(model, DataLoader(data, batch_size=100))
    assert [entry["epoch"] for entry in callback.history] == [2.0]
    assert "eval_knn_top1_k10_t0.1" in callback.history[0]
    emb, lab = callback.embed(model, DataLoader(data, batch_size=50))
    assert emb.shape == (120, 32) and lab.shape == (120,)


def test_callback_errors() -> None:
    loader = DataLoader(TensorDataset(torch.randn(10, 8, 8), torch.zeros(10).long()))
    with pytest.raises(ValueError, match="every_n_epochs must be a positive integer, got 0"):
        RetrievalEvaluationCallback(loader, loader, every_n_epochs=0)
    with pytest.raises(ValueError, match="max_items"):
        RetrievalEvaluationCallback(loader, loader, max_items=1)
    callback = RetrievalEvaluationCallback(loader, loader)
    with pytest.raises(ValueError, match="no embed"):
        callback.embed(pl.LightningModule(), loader)
    bad = DataLoader(torch.randn(10, 8, 8))  # Images only, no labels.
    with pytest.raises(ValueError, match=r"\(images, labels, ...\)"):
        callback.embed(TinyEmbedder(), bad)


def test_callback_metrics_are_evaluate_against_bank_on_its_embeddings() -> None:
    images, labels = _digits()
    train = DataLoader(TensorDataset(images[:1000], labels[:1000]), batch_size=200)
    test = DataLoader(ViewsDataset(images[1000:1400], labels[1000:1400]), batch_size=100)
    evaluator = RetrievalEvaluator(knn_protocols=("dino",), backend="torch", recall_at=(1, 4))
    callback = RetrievalEvaluationCallback(train, test, evaluator=evaluator)
    model = TinyEmbedder()
    model.train()
    metrics = callback.evaluate(model)
    assert model.training  # Restored after embedding in eval mode.
    test_emb, test_labels = callback.embed(model, test)
    train_emb, train_labels = callback.embed(model, train)
    expected = evaluate_against_bank(test_emb, test_labels, train_emb, train_labels, evaluator)
    assert metrics == expected.metrics
    assert list(metrics) == evaluator.metric_names()
