from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torchvision
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform
from torch import Tensor, nn

from lightly_grpo.backbones import (
    backbone_output_dim,
    build_backbone,
    export_backbone,
    extract_backbone_state_dict,
    load_backbone,
    resnet18_small,
    strip_classifier,
)
from lightly_grpo.data import ArrayImageDataset, load_digits_split
from tests.lightning_fit import fit_steps


def _randomize_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    # Fresh BatchNorm buffers are 0/1 everywhere, which would hide a running-stat mix-up.
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return module


@torch.no_grad()
def _features(module: nn.Module, x: Tensor) -> Tensor:
    return module.eval()(x)


@pytest.fixture
def images() -> Tensor:
    return torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_resnet18_small_output_shape(stem: str, images: Tensor) -> None:
    model = resnet18_small(in_channels=1, stem=stem)
    assert model.conv1.in_channels == 1
    assert _features(model, images).shape == (3, 512)
    assert backbone_output_dim(model, (1, 32, 32)) == 512


def test_stems_differ_and_bad_stem() -> None:
    imagenet, cifar = resnet18_small(stem="imagenet"), resnet18_small(stem="cifar")
    assert imagenet.conv1.kernel_size == (7, 7) and isinstance(imagenet.maxpool, nn.MaxPool2d)
    assert cifar.conv1.kernel_size == (3, 3) and isinstance(cifar.maxpool, nn.Identity)
    with pytest.raises(ValueError, match="tiny"):
        resnet18_small(stem="tiny")


def test_backbone_output_dim_keeps_mode_and_bn_stats() -> None:
    model = resnet18_small().train()
    before = model.bn1.running_mean.clone()
    assert backbone_output_dim(model, (1, 28, 28)) == 512
    assert model.training
    assert torch.equal(model.bn1.running_mean, before)


def test_build_backbone_variants() -> None:
    cifar = build_backbone("resnet18_small_cifar")
    assert isinstance(cifar.maxpool, nn.Identity)
    tv: Any = build_backbone("torchvision:resnet34", in_channels=1)
    assert isinstance(tv.fc, nn.Identity) and tv.conv1.in_channels == 1
    assert _features(tv, torch.zeros(2, 1, 64, 64)).shape == (2, 512)
    # A non-ResNet family: the first conv is adapted and the last Linear dropped.
    eff = build_backbone("torchvision:efficientnet_b0", in_channels=1)
    assert backbone_output_dim(eff, (1, 64, 64)) == 1280
    with pytest.raises(ValueError, match="resnet18_small_cifar"):
        build_backbone("resnet99")
    with pytest.raises(ValueError, match="not_a_model"):
        build_backbone("torchvision:not_a_model")


def test_extract_backbone_state_dict() -> None:
    sd = {"backbone.a": torch.ones(1), "projection_head.b": torch.zeros(1)}
    assert list(extract_backbone_state_dict(sd)) == ["a"]
    with pytest.raises(ValueError, match="teacher_backbone"):
        extract_backbone_state_dict(sd, "teacher_backbone.")


def test_fake_lightning_checkpoint_roundtrip(tmp_path: Path, images: Tensor) -> None:
    backbone = _randomize_bn(resnet18_small())
    head = nn.Linear(512, 64)
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state |= {f"projection_head.{k}": v for k, v in head.state_dict().items()}
    path = tmp_path / "fake.ckpt"
    torch.save({"state_dict": state, "epoch": 3, "hyper_parameters": {"lr": 0.1}}, path)

    loaded = load_backbone(path, "resnet18_small")
    assert not loaded.training
    torch.testing.assert_close(_features(loaded, images), _features(backbone, images))
    # A fresh model gives other features, so the comparison above is meaningful.
    assert not torch.allclose(_features(resnet18_small(), images), _features(backbone, images))


def test_export_backbone_roundtrip(tmp_path: Path, images: Tensor) -> None:
    backbone = _randomize_bn(resnet18_small(stem="cifar"))
    path = export_backbone(backbone, tmp_path / "nested" / "dir" / "backbone.pt")
    assert path.is_file()
    assert all(not k.startswith("backbone.") for k in torch.load(path, weights_only=True))
    loaded = load_backbone(path, "resnet18_small_cifar")
    torch.testing.assert_close(_features(loaded, images), _features(backbone, images))


def test_export_backbone_replaces_the_file_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = export_backbone(resnet18_small(), tmp_path / "backbone.pt")
    good = path.read_bytes()

    def crash_mid_write(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        Path(f).write_bytes(good[:100])  # a truncated file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        export_backbone(resnet18_small(), path)
    assert path.read_bytes() == good  # the previous export is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone.pt"]  # no partial left


def test_export_from_full_state_dict(tmp_path: Path, images: Tensor) -> None:
    backbone = _randomize_bn(resnet18_small())
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state["projection_head.weight"] = torch.zeros(4, 512)
    path = export_backbone(state, tmp_path / "bb.pt")
    torch.testing.assert_close(_features(load_backbone(path), images), _features(backbone, images))


@pytest.mark.parametrize("with_prefix", [False, True])
def test_plain_state_dict(tmp_path: Path, images: Tensor, with_prefix: bool) -> None:
    backbone = _randomize_bn(resnet18_small())
    state = backbone.state_dict()
    if with_prefix:
        state = {f"backbone.{k}": v for k, v in state.items()}
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    loaded = load_backbone(path)
    torch.testing.assert_close(_features(loaded, images), _features(backbone, images))


def test_explicit_prefix_and_module_target(tmp_path: Path, images: Tensor) -> None:
    teacher = _randomize_bn(resnet18_small(), seed=1)
    student = _randomize_bn(resnet18_small(), seed=2)
    state = {f"teacher_backbone.{k}": v for k, v in teacher.state_dict().items()}
    state |= {f"student_backbone.{k}": v for k, v in student.state_dict().items()}
    path = tmp_path / "dino.ckpt"
    torch.save({"state_dict": state}, path)
    target = resnet18_small()
    loaded = load_backbone(path, target, prefix="teacher_backbone.")
    assert loaded is target
    torch.testing.assert_close(_features(loaded, images), _features(teacher, images))


def test_other_architecture_lists_unexpected_and_mismatched_keys(tmp_path: Path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(ValueError) as info:
        load_backbone(path, "resnet18_small")
    message = str(info.value)
    assert str(path) in message
    # resnet34 has a third block in layer1 and a classifier that resnet18_small lacks,
    # and its RGB conv1 does not fit a 1-channel model.
    assert "layer1.2.conv1.weight" in message and "fc.weight" in message
    assert "conv1.weight: checkpoint (64, 3, 7, 7) vs model (64, 1, 7, 7)" in message


def test_smaller_checkpoint_lists_missing_keys(tmp_path: Path) -> None:
    path = export_backbone(resnet18_small(in_channels=3), tmp_path / "r18.pt")
    with pytest.raises(ValueError, match=r"missing keys \d+ \[layer1\.2\.conv1\.weight"):
        load_backbone(path, "torchvision:resnet34", in_channels=3)


def test_non_strict_load_skips_mismatches(tmp_path: Path) -> None:
    source: Any = _randomize_bn(torchvision.models.resnet34(weights=None))
    path = tmp_path / "r34.pth"
    torch.save(source.state_dict(), path)
    loaded: Any = load_backbone(path, "resnet18_small", strict=False)
    torch.testing.assert_close(loaded.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert loaded.conv1.weight.shape == (64, 1, 7, 7)


def test_missing_path_and_bad_contents(tmp_path: Path) -> None:
    missing = tmp_path / "missing.ckpt"
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_backbone(missing)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="garbage.ckpt"):
        load_backbone(garbage)
    listing = tmp_path / "list.pt"
    torch.save([torch.ones(1)], listing)
    with pytest.raises(ValueError, match="list.pt"):
        load_backbone(listing)


def test_torchvision_module_passed_directly(images: Tensor) -> None:
    model = torchvision.models.resnet34(weights=None, num_classes=7).train()
    loaded = load_backbone(model)
    assert loaded is model and not loaded.training
    assert isinstance(loaded.fc, nn.Identity)
    assert _features(loaded, images.expand(-1, 3, -1, -1)).shape == (3, 512)
    kept = load_backbone(torchvision.models.resnet18(weights=None), strip_head=False)
    assert isinstance(kept.fc, nn.Linear)
    # A user's own module is left alone even if it has an `fc`.
    custom = nn.Sequential()
    custom.fc = nn.Linear(2, 2)
    assert isinstance(load_backbone(custom).fc, nn.Linear)


def test_strip_classifier_keeps_pooling_of_sequential_heads() -> None:
    model: Any = strip_classifier(torchvision.models.convnext_tiny(weights=None))
    assert isinstance(model.classifier[-1], nn.Identity)
    assert isinstance(model.classifier[0], nn.Module) and len(model.classifier) == 3
    with pytest.raises(ValueError, match="Sequential"):
        strip_classifier(nn.Sequential(nn.ReLU()))


class _TinySimCLR(pl.LightningModule):
    """The shape of our SimCLR recipe's module: `backbone` plus `projection_head`."""

    def __init__(self, lr: float = 0.05, run_dir: Path = Path("runs")) -> None:
        super().__init__()
        # A Path hyperparameter is what a recipe typically saves; it must not break loading.
        self.save_hyperparameters()
        self.backbone = resnet18_small()
        self.projection_head = nn.Linear(512, 16)

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        return self.projection_head(self.backbone(batch[0])).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"])


def test_real_lightning_checkpoint(tmp_path: Path, images: Tensor) -> None:
    pl.seed_everything(0)
    module = _TinySimCLR(run_dir=tmp_path)
    initial = {k: v.clone() for k, v in module.backbone.state_dict().items()}
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(4, 1, 32, 32)), batch_size=2
    )
    trainer = fit_steps(module, loader, tmp_path, steps=1)
    path = tmp_path / "simclr.ckpt"
    trainer.save_checkpoint(path)

    # The training step changed the weights and BN statistics, so loading must pick those up.
    assert not torch.equal(initial["bn1.running_mean"], module.backbone.bn1.running_mean)
    loaded = load_backbone(path, "resnet18_small")
    torch.testing.assert_close(_features(loaded, images), _features(module.backbone, images))
    exported = export_backbone(loaded, tmp_path / "exported.pt")
    torch.testing.assert_close(
        _features(load_backbone(exported), images), _features(module.backbone, images)
    )


# --------------------------------------------------------------------------- lightly's examples


def test_lightly_architecture_names_build_the_sequential_layout() -> None:
    model = build_backbone("lightly:resnet18", in_channels=1)
    reference = nn.Sequential(*list(torchvision.models.resnet18().children())[:-1])
    # Same keys and shapes as lightly's example backbone, but for the 1-channel first conv.
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert shapes.keys() == expected.keys()
    assert shapes.pop("0.weight") == (64, 1, 7, 7) and expected.pop("0.weight") == (64, 3, 7, 7)
    assert shapes == expected
    assert backbone_output_dim(model, (1, 32, 32)) == 512
    assert backbone_output_dim(build_backbone("lightly:resnet50", 3), (3, 32, 32)) == 2048
    with pytest.raises(ValueError, match="resnet18") as info:
        build_backbone("lightly:vgg11")
    assert "wide_resnet50_2" in str(info.value)
    with pytest.raises(ValueError, match="lightly:<torchvision resnet name>"):
        build_backbone("lightly:")
    with pytest.raises(ValueError, match="lightly:<torchvision resnet name>"):
        build_backbone("timm:resnet18")


class _LightlyExampleSimCLR(pl.LightningModule):
    """lightly's SimCLR example module (examples/pytorch_lightning/simclr.py), verbatim but for
    an optional 1-channel first convolution."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        resnet = torchvision.models.resnet18()
        if in_channels != 3:
            resnet.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.backbone = nn.Sequential(*list(resnet.children())[:-1])
        self.projection_head = SimCLRProjectionHead(512, 2048, 2048)
        self.criterion = NTXentLoss()

    def forward(self, x: Tensor) -> Tensor:
        x = self.backbone(x).flatten(start_dim=1)
        return self.projection_head(x)

    def training_step(self, batch: Any, batch_index: int) -> Tensor:
        (x0, x1) = batch[0]
        z0 = self.forward(x0)
        z1 = self.forward(x1)
        return self.criterion(z0, z1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.06)


@pytest.mark.parametrize("in_channels", [3, 1])
def test_lightly_example_checkpoint_loads_by_name(tmp_path: Path, in_channels: int) -> None:
    pl.seed_everything(0)
    images, labels = load_digits_split("train")
    if in_channels == 3:
        images = np.repeat(images[..., None], 3, axis=-1)  # RGB, as lightly's example expects
        transform = SimCLRTransform(input_size=16, gaussian_blur=0.0)
    else:
        transform = SimCLRTransform(
            input_size=16,
            gaussian_blur=0.0,
            random_gray_scale=0.0,
            normalize={"mean": [0.5], "std": [0.25]},
        )
    # Few, small images: the CPU cost of two ResNet-18 steps stays around a second.
    dataset = ArrayImageDataset(images[:8], labels[:8], transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=True, drop_last=True)
    module = _LightlyExampleSimCLR(in_channels)
    initial = {k: v.clone() for k, v in module.backbone.state_dict().items()}
    trainer = fit_steps(module, loader, tmp_path, steps=2)
    path = tmp_path / "lightly_simclr.ckpt"
    trainer.save_checkpoint(path)
    batchnorm: Any = module.backbone[1]
    assert not torch.equal(initial["1.running_mean"], batchnorm.running_mean)

    loaded = load_backbone(path, "lightly:resnet18", in_channels=in_channels)
    x = torch.randn(4, in_channels, 16, 16, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(_features(loaded, x), _features(module.backbone, x))
    # The in_channels must match the checkpoint: the error names the first convolution.
    with pytest.raises(ValueError, match=rf"0\.weight: checkpoint \(64, {in_channels}, 7, 7\)"):
        load_backbone(path, "lightly:resnet18", in_channels=4 - in_channels)


def test_a_teacher_student_checkpoint_loads_its_teacher_unless_told_otherwise(
    tmp_path: Path,
) -> None:
    from lightly_grpo.chains.config import CHECKPOINT_BACKBONES

    teacher, student = nn.Linear(3, 2), nn.Linear(3, 2)
    state = {f"teacher_backbone.{k}": v for k, v in teacher.state_dict().items()}
    state |= {f"backbone.{k}": v for k, v in student.state_dict().items()}
    path = tmp_path / "dino.pt"
    torch.save({"state_dict": state}, path)
    loaded = {
        choice: load_backbone(path, nn.Linear(3, 2), prefix=prefix)
        for choice, prefix in CHECKPOINT_BACKBONES.items()
    }
    assert torch.equal(loaded["auto"].weight, teacher.weight)
    assert torch.equal(loaded["teacher"].weight, teacher.weight)
    assert torch.equal(loaded["student"].weight, student.weight)


def test_files_that_are_not_checkpoints_and_nan_weights_give_clear_errors(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a checkpoint\n")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint or a damaged one"):
        load_backbone(text)
    good = export_backbone(resnet18_small(), tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="Cannot read checkpoint"):
        load_backbone(truncated)
    state = resnet18_small().state_dict()
    state["conv1.weight"] = torch.full_like(state["conv1.weight"], float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(ValueError, match=r"NaN or inf values in 1 \[conv1.weight\]"):
        load_backbone(tmp_path / "nan.pt")


class _RunsCode:
    """Unpickling this object creates a file: what a malicious checkpoint could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_checkpoints_load_weights_only_unless_trusted(tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    path = tmp_path / "foreign.ckpt"
    state = {f"backbone.{k}": v for k, v in resnet18_small().state_dict().items()}
    torch.save({"state_dict": state, "extra": _RunsCode(marker)}, path)
    refused = r"(?s)weights_only=True.*trusted=True \(--trust-checkpoint"
    with pytest.raises(ValueError, match=refused):
        load_backbone(path, "resnet18_small")
    assert not marker.exists()  # refused before any stored code ran
    backbone = load_backbone(path, "resnet18_small", trusted=True)  # the user's explicit choice
    assert marker.exists()
    assert isinstance(backbone, nn.Module)
