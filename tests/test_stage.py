from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from lightly.utils.benchmarking import MetricCallback
from torch import nn
from torch.utils.data import Subset

from lightly_grpo.backbones import load_backbone
from lightly_grpo.batchnorm import recompute_batchnorm_stats
from lightly_grpo.data import (
    ArrayImageDataset,
    eval_transform,
    load_digits_split,
    make_loader,
    simclr_transform,
)
from lightly_grpo.stage import GRPORMStage, split_batch


def small_cnn() -> nn.Module:
    """A small real CNN with BatchNorm, so the stage's tests run in seconds on a CPU."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 32),
    )


def digits(split: str, transform: object) -> ArrayImageDataset:
    images, labels = load_digits_split(split)
    return ArrayImageDataset(images, labels, transform=transform)  # type: ignore[arg-type]


def trainer(tmp_path: Path, epochs: int = 1, **kwargs: object) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        default_root_dir=str(tmp_path),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,  # type: ignore[arg-type]
    )


def policy_accuracy(stage: GRPORMStage, dataset: ArrayImageDataset) -> float:
    embeddings, labels = stage.embed_loader(make_loader(dataset, 256, shuffle=False))
    return float((stage.criterion.prototypes.predict(embeddings) == labels).float().mean())


def test_short_real_run_on_digits_raises_policy_accuracy_well_above_chance(
    tmp_path: Path,
) -> None:
    pl.seed_everything(0)
    train = digits("train", eval_transform(16))
    test = digits("test", eval_transform(16))
    stage = GRPORMStage(small_cnn(), num_classes=10, embedding_size=32, lr_backbone=3e-3)
    stage.init_prototypes(make_loader(train, 256, shuffle=False))
    before = policy_accuracy(stage, test)
    metrics = MetricCallback()
    trainer(tmp_path, epochs=8, callbacks=[metrics]).fit(
        stage, make_loader(train, 64, shuffle=True, drop_last=True)
    )
    after = policy_accuracy(stage, test)
    assert after > 0.8, f"test accuracy {after:.3f} (before {before:.3f}), chance is 0.1"
    assert after > before + 0.1
    logged = metrics.train_metrics
    for key in ("reward", "entropy", "clip_fraction", "degenerate_fraction", "accuracy"):
        assert f"train/{key}_epoch" in logged, key
    assert logged["train/reward_epoch"][-1] > logged["train/reward_epoch"][0]


def test_batchnorm_frozen_by_default_and_trained_on_request(tmp_path: Path) -> None:
    train = digits("train", eval_transform(16))
    loader = make_loader(Subset(train, range(128)), 64, shuffle=False)
    for mode, should_change in (("freeze", False), ("train", True)):
        pl.seed_everything(0)
        stage = GRPORMStage(small_cnn(), 10, 32, batchnorm=mode)
        bn = stage.backbone[1]
        before = bn.running_mean.clone()
        trainer(tmp_path, max_steps=2).fit(stage, loader)
        changed = not torch.equal(before, bn.running_mean)
        assert changed == should_change, mode


def test_recompute_batchnorm_gives_the_exact_batch_statistics() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)).eval()
    batches = [torch.randn(8, 1, 6, 6) * 3 + 1 for _ in range(3)]
    assert recompute_batchnorm_stats(model, batches) == 3
    with torch.no_grad():
        features = torch.cat([model[0](b) for b in batches])
    expected = features.mean(dim=(0, 2, 3))
    assert torch.allclose(model[1].running_mean, expected, atol=1e-5)
    assert not model.training  # the mode it had before is restored
    with pytest.raises(ValueError, match="no batches"):
        recompute_batchnorm_stats(model, [])


def test_inner_steps_clip_and_reference_kl_are_logged(tmp_path: Path) -> None:
    pl.seed_everything(0)
    train = digits("train", eval_transform(16))
    loader = make_loader(Subset(train, range(256)), 64, shuffle=True, drop_last=True)
    stage = GRPORMStage(small_cnn(), 10, 32, inner_steps=4, beta=0.1, lr_backbone=1e-2)
    stage.init_prototypes(loader)
    metrics = MetricCallback()
    trainer(tmp_path, epochs=2, callbacks=[metrics]).fit(stage, loader)
    assert metrics.train_metrics["train/clip_fraction_epoch"][-1] > 0
    assert metrics.train_metrics["train/kl_epoch"][-1] > 0
    # the reference model stays frozen
    assert all(not p.requires_grad for p in stage.reference.parameters())  # type: ignore[union-attr]


def test_lightly_multiview_batches_and_checkpoint_round_trip(tmp_path: Path) -> None:
    pl.seed_everything(0)
    views = digits("train", simclr_transform(16))
    loader = make_loader(Subset(views, range(64)), 32, shuffle=False)
    images, labels = split_batch(next(iter(loader)))
    assert images.shape == (64, 1, 16, 16) and labels.shape == (64,)
    stage = GRPORMStage(small_cnn(), 10, 32)
    fit = trainer(tmp_path, max_steps=2)
    fit.fit(stage, loader)
    path = tmp_path / "stage.ckpt"
    fit.save_checkpoint(path)
    loaded = load_backbone(path, small_cnn())
    x = torch.randn(4, 1, 16, 16)
    stage.eval()
    assert torch.allclose(loaded.eval()(x), stage.backbone(x), atol=1e-6)


def test_bad_batches_and_arguments_raise() -> None:
    with pytest.raises(ValueError, match="empty batch"):
        split_batch((torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="expected a batch"):
        split_batch(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="batchnorm must be one of"):
        GRPORMStage(small_cnn(), 10, 32, batchnorm="sometimes")
    with pytest.raises(ValueError, match="inner_steps must be >= 1, got 0"):
        GRPORMStage(small_cnn(), 10, 32, inner_steps=0)
    stage = GRPORMStage(small_cnn(), 10, 32)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\), got \[12\]"):
        stage.criterion(torch.randn(2, 32), torch.tensor([1, 12]))
    assert np.isfinite(float(stage.criterion(torch.randn(2, 32), torch.tensor([1, 2]))))
