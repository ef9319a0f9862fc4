"""Post-training methods by name: GRPO-RM's variants and the baselines a user would pick instead.

Every method is a :class:`~lightly_grpo.posttraining.PostTrainingModule` built from the same
:class:`MethodSettings` (learning rates, weight decay, BatchNorm policy, temperature), so a
comparison between two names differs in the objective only. The benchmark
(``recipes/benchmarks/bench_quality.py``) and the demo's baseline row build methods through
:func:`build_method`.

==============================  ==========================================================
name                            objective
==============================  ==========================================================
``linear-probe``                cross-entropy on a linear head, backbone frozen
``ce-linear``                   cross-entropy fine-tuning, linear head (the paper's baseline)
``ce-prototypes``               cross-entropy fine-tuning, GRPO-RM's cosine-prototype head
``supcon``                      pytorch-metric-learning ``SupConLoss``
``proxy-anchor``                pytorch-metric-learning ``ProxyAnchorLoss``
``grpo-accuracy``               GRPO-RM, accuracy reward only
``grpo-uniformity``             GRPO-RM, accuracy + uniformity (-lambda * pi_old)
``grpo-uniformity-similarity``  GRPO-RM, accuracy + uniformity (-lambda * clamped cosine)
``grpo-kl``                     GRPO-RM, accuracy + uniformity + reference KL (beta > 0)
==============================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from pytorch_metric_learning.losses import ProxyAnchorLoss, SupConLoss
from torch import nn

from lightly_grpo.baselines import CrossEntropyBaseline, LinearProbeBaseline, MetricLossBaseline
from lightly_grpo.losses.classification import GRPORMClassificationLoss
from lightly_grpo.posttraining import PostTrainingModule
from lightly_grpo.rewards import build_reward
from lightly_grpo.stage import GRPORMStage


@dataclass(frozen=True)
class MethodSettings:
    """What every method shares; only the objective differs between methods.

    Attributes:
        lr_backbone: AdamW learning rate of the backbone.
        lr_criterion: AdamW learning rate of the criterion's parameters (prototypes, proxies,
            classifier); the linear probe's only learning rate.
        weight_decay: AdamW weight decay of the backbone.
        batchnorm: BatchNorm policy (see :class:`~lightly_grpo.posttraining.PostTrainingModule`).
        temperature: Temperature of GRPO-RM's policy, of the cosine-prototype head and of SupCon.
        uniformity: Lambda of GRPO-RM's uniformity reward (variants that use it).
        beta: Reference KL weight of ``grpo-kl``.
        warmup_steps: Linear warmup steps of the cosine schedule.

    Examples:
        >>> MethodSettings(lr_backbone=3e-4).lr_criterion
        0.001
    """

    lr_backbone: float = 1e-4
    lr_criterion: float = 1e-3
    weight_decay: float = 1e-2
    batchnorm: str = "freeze"
    temperature: float = 0.1
    uniformity: float = 1.0
    beta: float = 0.1
    warmup_steps: int = 0

    def with_lr(self, name: str, value: float) -> MethodSettings:
        """A copy with ``lr_backbone`` or ``lr_criterion`` set to ``value``."""
        if name not in ("lr_backbone", "lr_criterion"):
            raise ValueError(f"name must be 'lr_backbone' or 'lr_criterion', got {name!r}")
        if name == "lr_backbone":
            return replace(self, lr_backbone=value)
        return replace(self, lr_criterion=value)


#: Builds a method from (backbone, num_classes, embedding_size, settings).
MethodBuilder = Callable[[nn.Module, int, int, MethodSettings], PostTrainingModule]


@dataclass(frozen=True)
class MethodSpec:
    """A named post-training method.

    Attributes:
        name: Registry key (command line, benchmark tables).
        description: One line for tables and help.
        build: The builder.
        tuned_lr: The learning rate a benchmark tunes: ``"lr_backbone"``, or ``"lr_criterion"``
            for the linear probe (its backbone does not train).
        is_grpo: Whether the method is a GRPO-RM variant.
        overrides: Settings a variant (``"<method>@<setting>=<value>"``) changes; apply them
            with :meth:`settings`.
    """

    name: str
    description: str
    build: MethodBuilder
    tuned_lr: str = "lr_backbone"
    is_grpo: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)

    def settings(self, base: MethodSettings | None = None) -> MethodSettings:
        """``base`` (default :class:`MethodSettings`) with this method's overrides applied.

        A variant that sets its tuned learning rate moves the centre of a benchmark's grid.

        Examples:
            >>> method_spec("grpo-kl@beta=0.5").settings().beta
            0.5
        """
        changed: MethodSettings = replace(base or MethodSettings(), **self.overrides)
        return changed


def _common(settings: MethodSettings) -> dict[str, Any]:
    return {
        "lr_backbone": settings.lr_backbone,
        "weight_decay": settings.weight_decay,
        "batchnorm": settings.batchnorm,
        "warmup_steps": settings.warmup_steps,
    }


def _linear_probe(
    backbone: nn.Module, num_classes: int, size: int, s: MethodSettings
) -> PostTrainingModule:
    return LinearProbeBaseline(
        backbone, num_classes, size, lr_criterion=s.lr_criterion, **_common(s)
    )


def _cross_entropy(classifier: str) -> MethodBuilder:
    def build(
        backbone: nn.Module, num_classes: int, size: int, s: MethodSettings
    ) -> PostTrainingModule:
        return CrossEntropyBaseline(
            backbone,
            num_classes,
            size,
            classifier=classifier,
            temperature=s.temperature,
            lr_criterion=s.lr_criterion,
            **_common(s),
        )

    return build


def _supcon(
    backbone: nn.Module, num_classes: int, size: int, s: MethodSettings
) -> PostTrainingModule:
    return MetricLossBaseline(
        backbone, SupConLoss(temperature=s.temperature), lr_criterion=s.lr_criterion, **_common(s)
    )


def _proxy_anchor(
    backbone: nn.Module, num_classes: int, size: int, s: MethodSettings
) -> PostTrainingModule:
    # pytorch-metric-learning's defaults (margin 0.1, alpha 32), as its authors recommend.
    loss = ProxyAnchorLoss(num_classes, size)
    return MetricLossBaseline(backbone, loss, lr_criterion=s.lr_criterion, **_common(s))


def _grpo(uniformity: bool, form: str = "policy", kl: bool = False) -> MethodBuilder:
    def build(
        backbone: nn.Module, num_classes: int, size: int, s: MethodSettings
    ) -> PostTrainingModule:
        criterion = GRPORMClassificationLoss(
            num_classes,
            size,
            temperature=s.temperature,
            reward=build_reward(1.0, s.uniformity if uniformity else 0.0, form),
            beta=s.beta if kl else 0.0,
        )
        return GRPORMStage(
            backbone,
            criterion=criterion,
            lr_prototypes=s.lr_criterion,
            **_common(s),
        )

    return build


_METHODS: tuple[MethodSpec, ...] = (
    MethodSpec("linear-probe", "linear head on the frozen backbone", _linear_probe, "lr_criterion"),
    MethodSpec("ce-linear", "cross-entropy fine-tuning, linear head", _cross_entropy("linear")),
    MethodSpec(
        "ce-prototypes",
        "cross-entropy fine-tuning, cosine-prototype head",
        _cross_entropy("prototypes"),
    ),
    MethodSpec("supcon", "SupCon fine-tuning (pytorch-metric-learning)", _supcon),
    MethodSpec("proxy-anchor", "ProxyAnchor fine-tuning (pytorch-metric-learning)", _proxy_anchor),
    MethodSpec("grpo-accuracy", "GRPO-RM, accuracy reward", _grpo(False), is_grpo=True),
    MethodSpec(
        "grpo-uniformity",
        "GRPO-RM, accuracy + uniformity (-lambda pi_old)",
        _grpo(True, "policy"),
        is_grpo=True,
    ),
    MethodSpec(
        "grpo-uniformity-similarity",
        "GRPO-RM, accuracy + uniformity (-lambda max(cos, 0))",
        _grpo(True, "similarity"),
        is_grpo=True,
    ),
    MethodSpec(
        "grpo-kl",
        "GRPO-RM, accuracy + uniformity + reference KL",
        _grpo(True, "policy", kl=True),
        is_grpo=True,
    ),
)

#: Every method by name, in table order (baselines first).
METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in _METHODS}


def _variant(spec: MethodSpec, name: str, overrides: dict[str, Any]) -> MethodSpec:
    changes = ", ".join(f"{key}={value:g}" for key, value in overrides.items())
    return replace(
        spec, name=name, description=f"{spec.description} ({changes})", overrides=overrides
    )


def method_spec(name: str) -> MethodSpec:
    """The method called ``name``, or a variant ``"<method>@<setting>=<value>,..."`` of it whose
    :class:`MethodSettings` are overridden (e.g. ``"grpo-uniformity@uniformity=2"``), the way a
    benchmark sweeps one setting.

    Raises:
        ValueError: For an unknown method or setting, or a value that is not a number; the
            message lists the known ones.

    Examples:
        >>> method_spec("ce-linear").tuned_lr
        'lr_backbone'
        >>> method_spec("grpo-uniformity@uniformity=2,temperature=0.05").description
        'GRPO-RM, accuracy + uniformity (-lambda pi_old) (uniformity=2, temperature=0.05)'
    """
    base, _, variant = name.partition("@")
    try:
        spec = METHODS[base]
    except KeyError:
        raise ValueError(f"Unknown method {base!r}; known: {', '.join(METHODS)}") from None
    if not variant:
        return spec
    known = {f.name for f in fields(MethodSettings)} - {"batchnorm"}
    overrides: dict[str, Any] = {}
    for item in variant.split(","):
        key, _, value = item.partition("=")
        if key not in known:
            raise ValueError(f"method {name!r}: unknown setting {key!r}; known: {sorted(known)}")
        try:
            overrides[key] = int(value) if key == "warmup_steps" else float(value)
        except ValueError:
            raise ValueError(f"method {name!r}: {key} must be a number, got {value!r}") from None
    return _variant(spec, name, overrides)


def build_method(
    name: str,
    backbone: nn.Module,
    num_classes: int,
    embedding_size: int,
    settings: MethodSettings | None = None,
) -> PostTrainingModule:
    """Builds the post-training module of a named method around ``backbone``.

    Call :meth:`~lightly_grpo.posttraining.PostTrainingModule.init_criterion` with the labeled
    images before training: GRPO-RM's prototypes and the cosine-prototype head start at the
    class means.

    Examples:
        >>> from lightly_grpo.backbones import resnet18_small
        >>> model = build_method("supcon", resnet18_small(), num_classes=10, embedding_size=512)
        >>> type(model).__name__, model.can_predict_classes()
        ('MetricLossBaseline', False)
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if embedding_size < 1:
        raise ValueError(f"embedding_size must be >= 1, got {embedding_size}")
    spec = method_spec(name)
    return spec.build(backbone, num_classes, embedding_size, spec.settings(settings))


__all__ = ["METHODS", "MethodSettings", "MethodSpec", "build_method", "method_spec"]
