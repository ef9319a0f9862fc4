from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from torch import Tensor, nn

from lightly_grpo.backbones import backbone_output_dim, build_backbone, load_backbone
from lightly_grpo.data import make_loader, resolve_dataset, subset
from lightly_grpo.pretrain import (
    PRETRAIN_METHODS,
    PretrainMethod,
    SimCLRMethod,
    SimCLRModule,
    get_pretrain_method,
)
from tests.lightning_fit import fit_steps


def test_registry_knows_simclr_by_its_name() -> None:
    assert set(PRETRAIN_METHODS) == {"simclr", "dino"}
    for name, method in PRETRAIN_METHODS.items():
        assert method.name == name
    method = get_pretrain_method("simclr")
    assert isinstance(method, SimCLRMethod) and method.module_class is SimCLRModule
    assert method.backbone_prefix == "backbone."


def test_unknown_method_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'byol'.*known: dino, simclr"):
        get_pretrain_method("byol")


def test_simclr_hyperparameters_and_unknown_ones() -> None:
    method = get_pretrain_method("simclr")
    hyper = method.hyperparameters()
    assert hyper["temperature"] == 0.2 and hyper["lr"] == 1e-3
    assert "backbone" not in hyper and "feature_dim" not in hyper
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(16, 8))
    module = method.build_module(backbone, 8, temperature=0.5, output_dim=4)
    assert isinstance(module, SimCLRModule) and module.hparams["temperature"] == 0.5
    assert module(torch.zeros(3, 1, 4, 4)).shape == (3, 4)
    assert method.backbone(module) is backbone
    with pytest.raises(ValueError, match=r"\['momentum'\].*temperature"):
        method.build_module(backbone, 8, momentum=0.99)
    with pytest.raises(ValueError, match="feature_dim"):
        method.build_module(backbone, 0)


def test_simclr_transform_gives_two_views() -> None:
    views = get_pretrain_method("simclr").transform(16, 3)(Image.new("L", (8, 8)))
    assert len(views) == 2 and all(v.shape == (3, 16, 16) for v in views)


def test_simclr_module_rejects_single_view_batches() -> None:
    module = SimCLRModule(nn.Sequential(nn.Flatten(), nn.Linear(16, 8)), feature_dim=8)
    with pytest.raises(ValueError, match="two views"):
        module.training_step((torch.zeros(2, 1, 4, 4), torch.zeros(2)), 0)


def test_two_step_simclr_fit_on_digits_through_the_seam(tmp_path: Path) -> None:
    pl.seed_everything(0)
    method = get_pretrain_method("simclr")
    dataset = subset(resolve_dataset("digits", "train", method.transform(16, 1)), 16, seed=0)
    loader = make_loader(dataset, batch_size=8, shuffle=True, drop_last=True)
    backbone = build_backbone("resnet18_small", in_channels=1)
    module = method.build_module(backbone, backbone_output_dim(backbone, (1, 16, 16)), lr=0.01)
    before = {k: v.clone() for k, v in method.backbone(module).state_dict().items()}
    trainer = fit_steps(module, loader, tmp_path, steps=2)
    assert trainer.global_step == 2
    loss = trainer.callback_metrics["train/ntxent_step"]
    assert torch.isfinite(loss) and loss > 0
    trained = method.backbone(module)
    assert not torch.equal(before["conv1.weight"], trained.state_dict()["conv1.weight"])

    # The checkpoint holds the backbone under the method's prefix, where load_backbone finds it.
    path = tmp_path / "simclr.ckpt"
    trainer.save_checkpoint(path)
    loaded = load_backbone(path, "resnet18_small", prefix=method.backbone_prefix)
    images = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), trained.eval()(images))


class _TeacherStudent(pl.LightningModule):
    """The shape of a momentum-teacher recipe: the backbone to keep is not `self.backbone`."""

    def __init__(self, backbone: nn.Module, feature_dim: int, momentum: float = 0.99) -> None:
        super().__init__()
        self.student_backbone = backbone
        self.teacher_backbone = nn.Linear(feature_dim, feature_dim)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.student_backbone(batch[0]).sum()


class _TeacherMethod(PretrainMethod):
    name = "teacher"
    module_class = _TeacherStudent
    backbone_prefix = "teacher_backbone."

    def transform(self, input_size: int = 32, in_channels: int = 1) -> Any:
        return lambda image: [image, image]


def test_a_new_recipe_only_subclasses_the_method() -> None:
    method = _TeacherMethod()
    assert method.hyperparameters() == {"momentum": 0.99}
    module = method.build_module(nn.Linear(3, 3), 3, momentum=0.9)
    assert method.backbone(module) is module.teacher_backbone
    assert all(k.startswith(("student_", "teacher_")) for k in module.state_dict())
    with pytest.raises(TypeError):
        PretrainMethod()  # type: ignore[abstract]
