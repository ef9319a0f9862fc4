from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from lightly.utils.scheduler import cosine_schedule
from PIL import Image
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from lightly_grpo.backbones import (
    SmallViT,
    backbone_output_dim,
    build_backbone,
    export_backbone,
    load_backbone,
    vit_small,
)
from lightly_grpo.chains import DataConfig, PretrainConfig, TrainerConfig
from lightly_grpo.chains.pretrain import pretrain
from lightly_grpo.data import make_loader, resolve_dataset, subset
from lightly_grpo.pretrain import (
    PRETRAIN_METHODS,
    DINOMethod,
    DINOModule,
    dino_transform,
    get_pretrain_method,
)
from tests.lightning_fit import fit_steps


def _digits_loader(method: DINOMethod, input_size: int, images: int = 16) -> Any:
    transform = method.transform(input_size, 1)
    dataset = subset(resolve_dataset("digits", "train", transform), images, seed=0)
    return make_loader(dataset, batch_size=8, shuffle=True, drop_last=True)


def _dino(architecture: str, input_size: int) -> tuple[DINOMethod, DINOModule]:
    method = get_pretrain_method("dino")
    assert isinstance(method, DINOMethod)
    backbone = build_backbone(architecture, in_channels=1)
    feature_dim = backbone_output_dim(backbone, (1, input_size, input_size))
    module = method.build_module(backbone, feature_dim, lr=0.01)
    assert isinstance(module, DINOModule)
    return method, module


def test_registry_has_dino_which_keeps_the_teacher() -> None:
    method = PRETRAIN_METHODS["dino"]
    assert isinstance(method, DINOMethod) and method.module_class is DINOModule
    assert method.backbone_prefix == "teacher_backbone."
    assert method.backbone_prefixes == {"teacher": "teacher_backbone.", "student": "backbone."}
    hyper = method.hyperparameters()
    # The chain passes lr and temperature when the module takes them: DINO has no temperature.
    assert hyper["lr"] == 1e-3 and "temperature" not in hyper
    assert hyper["momentum_start"] == 0.996 and hyper["freeze_last_layer"] == 1
    module = method.build_module(nn.Sequential(nn.Flatten(), nn.Linear(16, 8)), 8)
    assert method.backbone(module) is module.teacher_backbone
    assert module.teacher_backbone is not module.backbone
    with pytest.raises(ValueError, match="momentum_end"):
        DINOModule(nn.Linear(2, 2), feature_dim=2, momentum_end=1.5)


@pytest.mark.parametrize("in_channels", [1, 3])
def test_transform_gives_two_global_and_local_views(in_channels: int) -> None:
    # The other mode than the output's, so the channel step has to convert.
    image = Image.new("RGB" if in_channels == 1 else "L", (28, 28), color=100)
    views = get_pretrain_method("dino").transform(16, in_channels)(image)
    assert [tuple(v.shape) for v in views] == [(in_channels, 16, 16)] * 2 + [
        (in_channels, 8, 8)
    ] * 2
    views = dino_transform(28, in_channels, n_local_views=3)(image)
    assert len(views) == 5 and views[0].shape[-1] == 28 and views[-1].shape[-1] == 14
    # A black image stays black under jitter: every view is 0 normalised with Fashion-MNIST's
    # statistics (ImageNet's would give about -2).
    black = dino_transform(16, in_channels)(Image.new("L", (28, 28)))
    for view in black:
        torch.testing.assert_close(view, torch.full_like(view, -0.2860 / 0.3530))


def test_local_views_are_at_least_eight_pixels_and_bad_sizes_fail() -> None:
    views = dino_transform(10)(Image.new("L", (28, 28)))
    assert views[-1].shape == (1, 8, 8)
    with pytest.raises(ValueError, match="in_channels"):
        dino_transform(16, in_channels=2)
    with pytest.raises(ValueError, match="input_size"):
        dino_transform(0)


def test_dino_module_rejects_batches_without_two_views() -> None:
    module = DINOModule(nn.Sequential(nn.Flatten(), nn.Linear(16, 8)), feature_dim=8)
    with pytest.raises(ValueError, match="at least two views"):
        module.training_step((torch.zeros(2, 1, 4, 4), torch.zeros(2)), 0)
    with pytest.raises(ValueError, match="of length 1"):
        module.training_step(([torch.zeros(2, 1, 4, 4)], torch.zeros(2)), 0)


class _RecordEMA(pl.Callback):
    """Records the student and teacher first-layer weights around every training batch."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, module: Any, *args: Any) -> None:
        self.steps.append(
            {
                "student": module.backbone.conv1.weight.detach().clone(),
                "teacher": module.teacher_backbone.conv1.weight.detach().clone(),
            }
        )

    def on_train_batch_end(self, trainer: pl.Trainer, module: Any, *args: Any) -> None:
        self.steps[-1]["teacher_after"] = module.teacher_backbone.conv1.weight.detach().clone()
        self.steps[-1]["momentum"] = float(trainer.callback_metrics["train/teacher_momentum"])


def test_two_step_dino_fit_trains_the_student_and_moves_the_teacher_by_ema(
    tmp_path: Path,
) -> None:
    pl.seed_everything(0)
    method, module = _dino("resnet18_small", 16)
    init = {k: v.clone() for k, v in module.state_dict().items()}
    torch.testing.assert_close(init["teacher_backbone.conv1.weight"], init["backbone.conv1.weight"])
    recorder = _RecordEMA()
    trainer = fit_steps(module, _digits_loader(method, 16), tmp_path, 2, callbacks=[recorder])
    assert trainer.global_step == 2
    loss = trainer.callback_metrics["train/dino_loss_step"]
    assert torch.isfinite(loss) and loss > 0

    state = module.state_dict()
    student_move = (state["backbone.conv1.weight"] - init["backbone.conv1.weight"]).norm()
    teacher_move = (
        state["teacher_backbone.conv1.weight"] - init["teacher_backbone.conv1.weight"]
    ).norm()
    assert student_move > 0 and teacher_move > 0
    assert teacher_move < 0.1 * student_move  # the teacher trails the student slowly
    # Each step: teacher <- m * teacher + (1 - m) * student, m on lightly's cosine schedule.
    for step, record in enumerate(recorder.steps):
        m = cosine_schedule(step, 2, 0.996, 1.0)
        assert record["momentum"] == pytest.approx(m)
        expected = m * record["teacher"] + (1 - m) * record["student"]
        torch.testing.assert_close(record["teacher_after"], expected)
    # The teacher gets no gradients; the student's last head layer is frozen in epoch 0.
    teacher = [*module.teacher_backbone.parameters(), *module.teacher_head.parameters()]
    assert all(not p.requires_grad and p.grad is None for p in teacher)
    last = "student_head.last_layer.weight_v"
    torch.testing.assert_close(state[last], init[last])
    assert not torch.equal(
        state["student_head.layers.0.weight"], init["student_head.layers.0.weight"]
    )

    # Both backbones load from the checkpoint under their prefixes, and they differ.
    path = tmp_path / "dino.ckpt"
    trainer.save_checkpoint(path)
    loaded = {
        role: load_backbone(path, "resnet18_small", prefix=prefix)
        for role, prefix in method.backbone_prefixes.items()
    }
    for role, source in (("teacher", module.teacher_backbone), ("student", module.backbone)):
        for key, value in source.state_dict().items():
            torch.testing.assert_close(loaded[role].state_dict()[key], value)
    assert not torch.equal(
        loaded["teacher"].state_dict()["conv1.weight"],
        loaded["student"].state_dict()["conv1.weight"],
    )


def test_pretrain_chain_with_dino_and_vit_small_exports_the_teacher(tmp_path: Path) -> None:
    # vit_small (position embeddings laid out for 28 px) at 16 px global and 8 px local views:
    # the chain builds it without an input size. Far cheaper than a ResNet-18 here.
    cfg = PretrainConfig(
        out_dir=str(tmp_path / "dino"),
        method="dino",
        architecture="vit_small",
        epochs=1,
        batch_size=8,
        max_images=16,
        lr=0.01,
        data=DataConfig(dataset="digits", input_size=16),
        trainer=TrainerConfig(accelerator="cpu", progress=False),
    )
    ckpt = pretrain(cfg)
    assert ckpt.is_file()
    assert json.loads((ckpt.parent / "config.json").read_text())["method"] == "dino"
    exported = torch.load(ckpt.parent / "backbone.pt", weights_only=True)
    teacher = load_backbone(ckpt, "vit_small", prefix="teacher_backbone.").state_dict()
    student = load_backbone(ckpt, "vit_small", prefix="backbone.").state_dict()
    assert exported.keys() == teacher.keys()
    for key, value in exported.items():
        torch.testing.assert_close(value, teacher[key])
    assert not torch.equal(exported["conv_proj.weight"], student["conv_proj.weight"])
    backbone = load_backbone(ckpt.parent / "backbone.pt", "vit_small")
    assert backbone(torch.zeros(2, 1, 16, 16)).shape == (2, 192)


def test_vit_small_gives_class_token_features_at_any_size() -> None:
    torch.manual_seed(0)
    model = build_backbone("vit_small", in_channels=1)
    assert isinstance(model, SmallViT) and isinstance(model, VisionTransformer)
    images = torch.randn(2, 1, 28, 28)
    features = model(images)
    assert features.shape == (2, 192)
    # At the native size it is exactly torchvision's forward (with the head removed).
    torch.testing.assert_close(features, VisionTransformer.forward(model, images))
    assert model(torch.randn(2, 1, 14, 14)).shape == (2, 192)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 192)
    narrow = vit_small(in_channels=3, hidden_dim=64, num_heads=2)
    assert narrow(torch.randn(1, 3, 28, 28)).shape == (1, 64)
    with pytest.raises(ValueError, match=r"at least 4 pixels.*\(2, 1, 3, 3\)"):
        model(torch.zeros(2, 1, 3, 3))
    with pytest.raises(ValueError, match="image_size=30, patch_size=4"):
        vit_small(image_size=30)
    with pytest.raises(ValueError, match="in_channels"):
        vit_small(in_channels=0)


def test_vit_small_round_trips_through_export_and_load(tmp_path: Path) -> None:
    model = vit_small(in_channels=1)
    path = export_backbone(model, tmp_path / "vit.pt")
    loaded = load_backbone(path, "vit_small", in_channels=1)
    images = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model.eval()(images))


def test_one_step_dino_fit_with_vit_small(tmp_path: Path) -> None:
    pl.seed_everything(0)
    method, module = _dino("vit_small", 28)  # 28 px global views, 14 px local ones
    before = module.backbone.conv_proj.weight.detach().clone()
    trainer = fit_steps(module, _digits_loader(method, 28, images=8), tmp_path, steps=1)
    assert trainer.global_step == 1
    assert torch.isfinite(trainer.callback_metrics["train/dino_loss_step"])
    assert not torch.equal(before, module.backbone.conv_proj.weight)
