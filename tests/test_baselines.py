"""Baselines train on the same post-training base as GRPO-RM."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_metric_learning.losses import ProxyAnchorLoss, SupConLoss
from torch import nn

from lightly_grpo.baselines import CrossEntropyBaseline, LinearProbeBaseline, MetricLossBaseline
from lightly_grpo.embedding import class_means
from lightly_grpo.losses import GRPORMClassificationLoss
from lightly_grpo.stage import GRPORMStage
from tests.test_stage import digit_loader, small_cnn, trainer


@pytest.mark.parametrize("classifier", ["linear", "prototypes"])
def test_cross_entropy_baseline_learns_and_predicts(tmp_path: Path, classifier: str) -> None:
    pl.seed_everything(0)
    model = CrossEntropyBaseline(
        small_cnn(),
        10,
        32,
        classifier=classifier,
        lr_backbone=1e-2,
        lr_criterion=1e-2,
        batchnorm="train",
    )
    loader = digit_loader(512, 64)
    images, labels = next(iter(loader))
    model.eval()
    before = float((model.predict_classes(images) == labels).float().mean())
    trainer(tmp_path, epochs=4).fit(model, loader)
    model.eval()
    accuracy = float((model.predict_classes(images) == labels).float().mean())
    assert accuracy > max(0.35, before + 0.2), (before, accuracy)


def test_baselines_share_the_parameter_groups_of_the_grpo_stage() -> None:
    kwargs = {"lr_backbone": 2e-4, "weight_decay": 0.03, "lr_schedule": "constant"}
    stage = GRPORMStage(small_cnn(), GRPORMClassificationLoss(10, 32), lr_criterion=4e-3, **kwargs)
    proxy = MetricLossBaseline(small_cnn(), ProxyAnchorLoss(10, 32), lr_criterion=4e-3, **kwargs)
    grpo_groups = stage.configure_optimizers().param_groups
    proxy_groups = proxy.configure_optimizers().param_groups
    summary = [
        [(g["name"], g["lr"], g["weight_decay"], len(g["params"])) for g in groups]
        for groups in (grpo_groups, proxy_groups)
    ]
    assert summary[0] == summary[1]  # same groups, same settings: only the objective differs


def test_metric_loss_baseline_steps_with_supcon(tmp_path: Path) -> None:
    pl.seed_everything(0)
    model = MetricLossBaseline(small_cnn(), SupConLoss(temperature=0.1), batchnorm="train")
    before = model.backbone[0].weight.detach().clone()
    trainer(tmp_path, max_steps=2).fit(model, digit_loader(128, 64))
    assert not torch.equal(before, model.backbone[0].weight)
    with pytest.raises(ValueError, match="classifier must be one of"):
        CrossEntropyBaseline(nn.Identity(), 10, 32, classifier="mlp")


def test_linear_probe_trains_only_its_head(tmp_path: Path) -> None:
    pl.seed_everything(0)
    model = LinearProbeBaseline(small_cnn(), 10, 32, lr_criterion=1e-2, batchnorm="train")
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = model.criterion.weight.detach().clone()
    trainer(tmp_path, max_steps=3).fit(model, digit_loader(256, 64))
    # Frozen means frozen: weights and BatchNorm running statistics are the pretrained ones,
    # even with batchnorm="train".
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, backbone_before[key]), key
    assert not torch.equal(head_before, model.criterion.weight)
    assert [g["name"] for g in model.parameter_groups()] == ["criterion"]
    assert model.can_predict_classes()


def test_proxy_anchor_classifies_by_its_nearest_proxy_and_supcon_has_no_classifier() -> None:
    loss = ProxyAnchorLoss(3, 4)
    with torch.no_grad():
        loss.proxies.copy_(torch.eye(3, 4) * 5.0)
    model = MetricLossBaseline(nn.Identity(), loss)
    embeddings = torch.tensor([[0.1, 2.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.1], [1.0, 0.2, 0.0, 0.0]])
    assert model.can_predict_classes()
    assert model.classify_embeddings(embeddings).tolist() == [1, 2, 0]
    supcon = MetricLossBaseline(nn.Identity(), SupConLoss())
    assert not supcon.can_predict_classes()
    with pytest.raises(NotImplementedError, match="no class proxies"):
        supcon.classify_embeddings(embeddings)


def test_prototype_head_starts_at_the_class_means_and_the_linear_head_does_not() -> None:
    images, labels = next(iter(digit_loader(200, 200)))
    loader = [(images, labels)]
    for classifier in ("prototypes", "linear"):
        pl.seed_everything(0)
        model = CrossEntropyBaseline(small_cnn(), 10, 32, classifier=classifier)
        model.eval()
        with torch.no_grad():
            means, _ = class_means(model(images), labels, 10)
        before = [p.detach().clone() for p in model.criterion.parameters()]
        model.init_criterion(loader)
        if classifier == "prototypes":
            assert torch.allclose(model.criterion.keys(), means, atol=1e-5)
        else:
            after = list(model.criterion.parameters())
            assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_every_method_logs_a_validation_knn_curve(tmp_path: Path) -> None:
    import torch.nn.functional as F

    from lightly_grpo.evaluation import RetrievalEvaluator

    pl.seed_everything(0)
    loader = digit_loader(64, 32)
    model = MetricLossBaseline(small_cnn(), SupConLoss(temperature=0.1), lr_backbone=1e-3)
    fit = trainer(tmp_path, max_steps=2)
    fit.fit(model, loader, loader)
    # SupCon has no classifier: no val/accuracy, but a kNN curve all the same.
    assert "val/accuracy" not in fit.callback_metrics
    logged = float(fit.callback_metrics["val/knn_top1"])
    model.eval()
    with torch.no_grad():
        batches = [(model(images), labels) for images, labels in loader]
    z = torch.cat([e for e, _ in batches])
    y = torch.cat([lab for _, lab in batches])
    # By hand: each image's 20 nearest other images vote with weights exp(cos / 0.07).
    z = F.normalize(z, dim=1)
    similarities = (z @ z.t()).fill_diagonal_(float("-inf"))
    top, index = similarities.topk(20, dim=1)
    votes = torch.zeros(len(y), 10).scatter_add_(1, y[index], (top / 0.07).exp())
    assert logged == pytest.approx(float((votes.argmax(1) == y).float().mean()), abs=1e-6)
    evaluator = RetrievalEvaluator(knn_protocols=("dino",), retrieval=False, nmi=False)
    assert logged == pytest.approx(evaluator.evaluate(z, y).metrics["knn_top1_dino"], abs=1e-6)
    assert 0.0 <= logged <= 1.0
