"""Post-training methods by name: GRPO-RM's variants and the baselines a user would pick instead.

Every method is a :class:`~lightly_grpo.posttraining.PostTrainingModule` built from the same
run config (:class:`~lightly_grpo.chains.config.PosttrainConfig`: learning rates, weight decay,
BatchNorm policy, temperature, reward weights), so a comparison between two names differs in the
objective only. The benchmark
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
``grpo-sampled``                GRPO-RM, G draws with replacement from pi_old (GRPO's group)
``grpo-expected``               GRPO-RM, pi_old-weighted group (exact expectation of sampled)
``grpo-expected-dr``            the same without the std normalisation (Dr. GRPO)
==============================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pytorch_metric_learning.losses import ProxyAnchorLoss, SupConLoss
from torch import nn

from lightly_grpo.baselines import CrossEntropyBaseline, LinearProbeBaseline, MetricLossBaseline
from lightly_grpo.losses.classification import GRPORMClassificationLoss
from lightly_grpo.losses.policy import GRPORMPolicyLoss
from lightly_grpo.posttraining import PostTrainingModule
from lightly_grpo.rewards import DEFAULT_UNIFORMITY_WEIGHT, Reward, build_reward
from lightly_grpo.stage import GRPORMStage

if TYPE_CHECKING:
    from lightly_grpo.chains.config import PosttrainConfig

#: Reference KL weight of ``grpo-kl`` when the config's ``beta`` is 0.
DEFAULT_KL_BETA = 0.1
#: The learning rates a benchmark may tune (a method tunes one of them).
TUNABLE_LRS = ("lr_backbone", "lr_criterion")
#: Config fields a variant ``"<method>@<field>=<value>"`` may set (numbers).
VARIANT_FIELDS = (
    "lr_backbone",
    "lr_criterion",
    "weight_decay",
    "warmup_steps",
    "temperature",
    "accuracy_reward",
    "uniformity_reward",
    "beta",
    "clip_eps",
    "inner_steps",
    "group_size",
)
_INT_FIELDS = ("warmup_steps", "inner_steps", "group_size")
#: Draws per query of ``grpo-sampled`` when the config's ``group_size`` is None (GRPO's usual G).
DEFAULT_DRAWS = 16

#: Builds a method from (backbone, num_classes, embedding_size, config).
MethodBuilder = Callable[[nn.Module, int, int, "PosttrainConfig"], PostTrainingModule]


def default_config() -> PosttrainConfig:
    """The run config's defaults (what a method is built from when no config is given)."""
    from lightly_grpo.chains.config import PosttrainConfig  # the chains import this module

    return PosttrainConfig()


def with_lr(cfg: PosttrainConfig, name: str, value: float) -> PosttrainConfig:
    """A copy of ``cfg`` with the learning rate ``name`` (``lr_backbone`` or ``lr_criterion``)
    set to ``value``: what a benchmark's learning-rate grid changes.

    Examples:
        >>> with_lr(default_config(), "lr_criterion", 0.01).lr_criterion
        0.01
    """
    if name not in TUNABLE_LRS:
        raise ValueError(f"name must be one of {TUNABLE_LRS}, got {name!r}")
    changes: dict[str, Any] = {name: value}
    return replace(cfg, **changes)


def uniformity_weight(cfg: PosttrainConfig, default: float = DEFAULT_UNIFORMITY_WEIGHT) -> float:
    """``cfg.uniformity_reward``, or ``default`` (the output set's) when it is None."""
    return default if cfg.uniformity_reward is None else cfg.uniformity_reward


def training_settings(cfg: PosttrainConfig) -> dict[str, Any]:
    """The :class:`~lightly_grpo.posttraining.PostTrainingModule` settings of a config: what
    every method shares."""
    return {
        "lr_backbone": cfg.lr_backbone,
        "lr_criterion": cfg.lr_criterion,
        "weight_decay": cfg.weight_decay,
        "batchnorm": cfg.batchnorm,
        "warmup_steps": cfg.warmup_steps,
    }


def policy_settings(cfg: PosttrainConfig) -> dict[str, Any]:
    """The :class:`~lightly_grpo.losses.GRPORMPolicyLoss` settings of a config (every output
    set's criterion)."""
    return {
        "temperature": cfg.temperature,
        "clip_eps": cfg.clip_eps,
        "beta": cfg.beta,
        "group_size": cfg.group_size,
        "compile_math": cfg.compile_loss,
        "estimator": cfg.estimator,
        "normalize_std": cfg.normalize_std,
    }


def grpo_stage(
    cfg: PosttrainConfig, backbone: nn.Module, criterion: GRPORMPolicyLoss
) -> GRPORMStage:
    """The one place a GRPO-RM stage is built from a config, around a ready criterion (every
    output set, labeled or not, trains under the same settings)."""
    return GRPORMStage(backbone, criterion, inner_steps=cfg.inner_steps, **training_settings(cfg))


def class_criterion(
    cfg: PosttrainConfig, num_classes: int, embedding_size: int, reward: Reward | None = None
) -> GRPORMClassificationLoss:
    """GRPO-RM over class prototypes with the config's policy settings; ``reward`` defaults to
    the config's accuracy + uniformity reward."""
    if reward is None:
        reward = build_reward(cfg.accuracy_reward, uniformity_weight(cfg), cfg.uniformity_form)
    return GRPORMClassificationLoss(
        num_classes, embedding_size, reward=reward, **policy_settings(cfg)
    )


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
        tunes_criterion: Whether a benchmark also tunes ``lr_criterion`` beside ``tuned_lr``
            (the method has criterion parameters of its own and trains its backbone).
        overrides: Config fields a variant (``"<method>@<field>=<value>"``) changes; apply them
            with :meth:`config`.
    """

    name: str
    description: str
    build: MethodBuilder
    tuned_lr: str = "lr_backbone"
    is_grpo: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    tunes_criterion: bool = True

    def config(self, base: PosttrainConfig | None = None) -> PosttrainConfig:
        """``base`` (default: the run config's defaults) with this method's overrides applied.

        A variant that sets its tuned learning rate moves the centre of a benchmark's grid.

        Examples:
            >>> method_spec("grpo-kl@beta=0.5").config().beta
            0.5
        """
        return replace(base or default_config(), **self.overrides)


def _linear_probe(
    backbone: nn.Module, num_classes: int, size: int, cfg: PosttrainConfig
) -> PostTrainingModule:
    return LinearProbeBaseline(backbone, num_classes, size, **training_settings(cfg))


def _cross_entropy(classifier: str) -> MethodBuilder:
    def build(
        backbone: nn.Module, num_classes: int, size: int, cfg: PosttrainConfig
    ) -> PostTrainingModule:
        return CrossEntropyBaseline(
            backbone,
            num_classes,
            size,
            classifier=classifier,
            temperature=cfg.temperature,
            **training_settings(cfg),
        )

    return build


def _supcon(
    backbone: nn.Module, num_classes: int, size: int, cfg: PosttrainConfig
) -> PostTrainingModule:
    loss = SupConLoss(temperature=cfg.temperature)
    return MetricLossBaseline(backbone, loss, **training_settings(cfg))


def _proxy_anchor(
    backbone: nn.Module, num_classes: int, size: int, cfg: PosttrainConfig
) -> PostTrainingModule:
    # pytorch-metric-learning's defaults (margin 0.1, alpha 32), as its authors recommend.
    loss = ProxyAnchorLoss(num_classes, size)
    return MetricLossBaseline(backbone, loss, **training_settings(cfg))


def _grpo(
    uniformity: bool,
    form: str | None = None,
    kl: bool = False,
    estimator: str | None = None,
    normalize_std: bool | None = None,
) -> MethodBuilder:
    """A GRPO-RM variant: the config's settings with the variant's reward, reference KL and
    group estimator (None keeps the config's)."""

    def build(
        backbone: nn.Module, num_classes: int, size: int, cfg: PosttrainConfig
    ) -> PostTrainingModule:
        changes: dict[str, Any] = {"beta": (cfg.beta or DEFAULT_KL_BETA) if kl else 0.0}
        if not uniformity:
            changes["uniformity_reward"] = 0.0
        if form is not None:
            changes["uniformity_form"] = form
        if estimator is not None:
            changes["estimator"] = estimator
            if estimator == "sampled":
                changes["group_size"] = cfg.group_size or DEFAULT_DRAWS
            elif estimator == "expected":
                changes["group_size"] = None
        if normalize_std is not None:
            changes["normalize_std"] = normalize_std
        variant = replace(cfg, **changes)
        return grpo_stage(variant, backbone, class_criterion(variant, num_classes, size))

    return build


_METHODS: tuple[MethodSpec, ...] = (
    MethodSpec(
        "linear-probe",
        "linear head on the frozen backbone",
        _linear_probe,
        "lr_criterion",
        tunes_criterion=False,
    ),
    MethodSpec("ce-linear", "cross-entropy fine-tuning, linear head", _cross_entropy("linear")),
    MethodSpec(
        "ce-prototypes",
        "cross-entropy fine-tuning, cosine-prototype head",
        _cross_entropy("prototypes"),
    ),
    MethodSpec(
        "supcon", "SupCon fine-tuning (pytorch-metric-learning)", _supcon, tunes_criterion=False
    ),
    MethodSpec("proxy-anchor", "ProxyAnchor fine-tuning (pytorch-metric-learning)", _proxy_anchor),
    MethodSpec("grpo-accuracy", "GRPO-RM, accuracy reward", _grpo(False), is_grpo=True),
    MethodSpec(
        "grpo-uniformity",
        "GRPO-RM, accuracy + uniformity (-lambda pi_old)",
        _grpo(True),
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
        _grpo(True, kl=True),
        is_grpo=True,
    ),
    MethodSpec(
        "grpo-sampled",
        "GRPO-RM, accuracy + uniformity, G draws with replacement from pi_old",
        _grpo(True, estimator="sampled"),
        is_grpo=True,
    ),
    MethodSpec(
        "grpo-expected",
        "GRPO-RM, accuracy + uniformity, pi_old-weighted group (exact expectation of sampled)",
        _grpo(True, estimator="expected"),
        is_grpo=True,
    ),
    MethodSpec(
        "grpo-expected-dr",
        "GRPO-RM, accuracy + uniformity, pi_old-weighted group, no std normalisation (Dr. GRPO)",
        _grpo(True, estimator="expected", normalize_std=False),
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
    """The method called ``name``, or a variant ``"<method>@<field>=<value>,..."`` of it whose
    config fields (:data:`VARIANT_FIELDS`) are overridden (e.g.
    ``"grpo-uniformity@uniformity_reward=2"``), the way a benchmark sweeps one setting.

    Raises:
        ValueError: For an unknown method or field, or a value that is not a number; the
            message lists the known ones.

    Examples:
        >>> method_spec("ce-linear").tuned_lr
        'lr_backbone'
        >>> method_spec("grpo-uniformity@uniformity_reward=2,temperature=0.05").description
        'GRPO-RM, accuracy + uniformity (-lambda pi_old) (uniformity_reward=2, temperature=0.05)'
    """
    base, _, variant = name.partition("@")
    try:
        spec = METHODS[base]
    except KeyError:
        raise ValueError(f"Unknown method {base!r}; known: {', '.join(METHODS)}") from None
    if not variant:
        return spec
    overrides: dict[str, Any] = {}
    for item in variant.split(","):
        key, _, value = item.partition("=")
        if key not in VARIANT_FIELDS:
            raise ValueError(
                f"method {name!r}: unknown setting {key!r}; known: {sorted(VARIANT_FIELDS)}"
            )
        try:
            overrides[key] = int(value) if key in _INT_FIELDS else float(value)
        except ValueError:
            raise ValueError(f"method {name!r}: {key} must be a number, got {value!r}") from None
    return _variant(spec, name, overrides)


def build_method(
    name: str,
    backbone: nn.Module,
    num_classes: int,
    embedding_size: int,
    cfg: PosttrainConfig | None = None,
) -> PostTrainingModule:
    """Builds the post-training module of a named method around ``backbone`` from a run config
    (default: the config's defaults).

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
    return spec.build(backbone, num_classes, embedding_size, spec.config(cfg))


__all__ = [
    "DEFAULT_KL_BETA",
    "METHODS",
    "MethodSpec",
    "build_method",
    "class_criterion",
    "grpo_stage",
    "method_spec",
    "policy_settings",
    "training_settings",
    "uniformity_weight",
    "with_lr",
]
