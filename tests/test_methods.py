"""Every named method builds from the same settings and trains on the common base."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from lightly_grpo.chains.config import PosttrainConfig
from lightly_grpo.methods import METHODS, build_method, method_spec, with_lr
from lightly_grpo.stage import GRPORMStage
from tests.test_stage import digit_loader, small_cnn, trainer

HAS_CLASSIFIER = {
    "linear-probe": True,
    "ce-linear": True,
    "ce-prototypes": True,
    "supcon": False,
    "proxy-anchor": True,
    "grpo-accuracy": True,
    "grpo-uniformity": True,
    "grpo-uniformity-similarity": True,
    "grpo-kl": True,
    "grpo-sampled": True,
    "grpo-expected": True,
    "grpo-expected-dr": True,
}


def test_the_registry_holds_the_benchmarked_methods_in_table_order() -> None:
    assert list(METHODS) == list(HAS_CLASSIFIER)
    assert [m for m, spec in METHODS.items() if spec.is_grpo] == list(METHODS)[5:]
    with pytest.raises(ValueError, match=r"Unknown method 'sgd'.*ce-linear"):
        method_spec("sgd")
    with pytest.raises(ValueError, match="num_classes"):
        build_method("ce-linear", small_cnn(), 1, 32)
    with pytest.raises(ValueError, match="lr_backbone"):
        with_lr(PosttrainConfig(), "lr_head", 1.0)


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_takes_a_real_training_step_and_shares_the_settings(
    tmp_path: Path, name: str
) -> None:
    pl.seed_everything(0)
    settings = PosttrainConfig(lr_backbone=3e-4, lr_criterion=2e-3, weight_decay=0.05)
    model = build_method(name, small_cnn(), 10, 32, settings)
    loader = digit_loader(128, 64)
    model.init_criterion(loader)
    groups = {g["name"]: g for g in model.parameter_groups()}
    if name == "linear-probe":
        assert set(groups) == {"criterion"} and groups["criterion"]["lr"] == 2e-3
    else:
        assert groups["backbone"]["lr"] == 3e-4 and groups["backbone_no_decay"]["lr"] == 3e-4
        if "criterion" in groups:  # SupCon has no parameters of its own
            assert groups["criterion"]["lr"] == 2e-3
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    trainer(tmp_path, max_steps=2).fit(model, loader)
    after = [p for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert model.can_predict_classes() is HAS_CLASSIFIER[name]
    if HAS_CLASSIFIER[name]:
        images, _ = next(iter(loader))
        model.eval()
        predicted = model.predict_classes(images)
        assert predicted.shape == (64,) and int(predicted.max()) < 10


def test_grpo_variants_differ_in_reward_and_reference_only() -> None:
    settings = PosttrainConfig(uniformity_reward=0.5, beta=0.2, temperature=0.05)
    kl = build_method("grpo-kl", small_cnn(), 10, 32, settings)
    plain = build_method("grpo-accuracy", small_cnn(), 10, 32, settings)
    assert isinstance(kl, GRPORMStage) and isinstance(plain, GRPORMStage)
    assert kl.reference is not None and kl.criterion.beta == 0.2
    assert plain.reference is None and plain.criterion.beta == 0.0
    assert kl.criterion.temperature == plain.criterion.temperature == 0.05
    assert "Uniformity" in repr(kl.criterion.reward) and "Uniformity" not in repr(
        plain.criterion.reward
    )


def test_a_variant_overrides_settings_and_rejects_unknown_ones() -> None:
    variant = build_method(
        "grpo-uniformity@uniformity_reward=2.5,temperature=0.2", small_cnn(), 10, 32
    )
    assert isinstance(variant, GRPORMStage)
    assert variant.criterion.temperature == 0.2 and "weight=2.5" in repr(variant.criterion.reward)
    spec = method_spec("ce-linear@warmup_steps=5")
    assert spec.name == "ce-linear@warmup_steps=5" and spec.tuned_lr == "lr_backbone"
    assert build_method(spec.name, small_cnn(), 10, 32).warmup_steps == 5
    with pytest.raises(ValueError, match=r"unknown setting 'tau'.*temperature"):
        method_spec("grpo-kl@tau=1")
    with pytest.raises(ValueError, match="beta must be a number, got 'big'"):
        method_spec("grpo-kl@beta=big")


def test_on_policy_variants_set_their_estimator() -> None:
    sampled = build_method("grpo-sampled", small_cnn(), 10, 32)
    expected = build_method("grpo-expected", small_cnn(), 10, 32, PosttrainConfig(group_size=4))
    dr = build_method("grpo-expected-dr", small_cnn(), 10, 32)
    assert isinstance(sampled, GRPORMStage) and isinstance(expected, GRPORMStage)
    assert isinstance(dr, GRPORMStage)
    assert (sampled.criterion.estimator, sampled.criterion.group_size) == ("sampled", 16)
    assert (expected.criterion.estimator, expected.criterion.group_size) == ("expected", None)
    assert expected.criterion.grpo.normalize_std and not dr.criterion.grpo.normalize_std
    many = build_method("grpo-sampled@group_size=64", small_cnn(), 10, 32)
    assert isinstance(many, GRPORMStage) and many.criterion.group_size == 64
