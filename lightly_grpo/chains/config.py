"""The settings of every chain, each declared once: default, help text and command-line flag.

The ``lightly-grpo`` command line is generated from these dataclasses
(:mod:`lightly_grpo.chains.flags`). A field's ``metadata`` may carry:

- ``help``: the flag's help text (without it, the comment after the field is used);
- ``flag``: the flag, e.g. ``"--pretrain-epochs"``; a name without dashes is a positional argument;
  ``None`` keeps the field off the command line (settable through ``--config``). Default:
  ``--`` and the field name with dashes;
- ``choices``: the allowed values, checked for flags and config files alike.

A run folder's ``config.json`` is :func:`dataclasses.asdict` of its config and loads back with
:func:`lightly_grpo.chains.flags.merge_config` (``lightly-grpo <command> --config FILE``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lightly_grpo.backbones import BACKBONE_PREFIX, TEACHER_BACKBONE_PREFIX
from lightly_grpo.data import POSTTRAIN_AUGMENTATIONS
from lightly_grpo.data.config import DataConfig
from lightly_grpo.losses.grpo import ESTIMATORS
from lightly_grpo.losses.policy import GRPORMPolicyLoss
from lightly_grpo.output_sets.neighbors import IN_BATCH_UNIFORMITY_WEIGHT, NeighborOutputSet
from lightly_grpo.posttraining import BATCHNORM_MODES, PostTrainingModule
from lightly_grpo.pretrain import PRETRAIN_METHODS
from lightly_grpo.pretrain.simclr import SimCLRModule
from lightly_grpo.rewards import (
    DEFAULT_UNIFORMITY_WEIGHT,
    UniformityReward,
    build_reward,
    neighbor_reward,
)
from lightly_grpo.stage import GRPORMStage


def default_of(owner: Callable[..., Any], name: str) -> Any:
    """The default of argument ``name`` of ``owner`` (a class or function): a config field reads
    its default from the object that uses it, so each default is declared once.

    Examples:
        >>> default_of(GRPORMPolicyLoss, "temperature")
        0.1
    """
    function = owner.__init__ if isinstance(owner, type) else owner  # type: ignore[misc]
    parameter = inspect.signature(function).parameters[name]
    if parameter.default is inspect.Parameter.empty:
        raise ValueError(f"{owner.__qualname__}({name}) has no default")
    return parameter.default


def owned_option(owner: Callable[..., Any], name: str, help: str, **kwargs: Any) -> Any:
    """An :func:`option` whose default is argument ``name``'s of ``owner`` (:func:`default_of`)."""
    return option(default_of(owner, name), help, **kwargs)


def option(
    default: Any,
    help: str,
    flag: str | None = "",
    choices: tuple[Any, ...] | None = None,
    aliases: tuple[str, ...] = (),
) -> Any:
    """A dataclass field with its command-line flag: ``dataclasses.field`` plus metadata.

    Args:
        default: The default value (immutable; lists go through ``default_factory``).
        help: Help text of the flag.
        flag: The flag; ``""`` derives it from the field name, ``None`` keeps it off the
            command line.
        choices: Allowed values.
        aliases: Other spellings of the flag, e.g. its name in a released version.

    Examples:
        >>> from dataclasses import dataclass, fields
        >>> @dataclass
        ... class Example:
        ...     epochs: int = option(10, "training epochs", flag="--train-epochs")
        >>> fields(Example)[0].metadata["flag"], Example().epochs
        ('--train-epochs', 10)
    """
    metadata = {"help": help, "flag": flag, "choices": choices, "aliases": aliases}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


#: ``--backbone-from`` -> the ``load_backbone`` prefix (None: the checkpoint's own choice).
CHECKPOINT_BACKBONES: dict[str, str | None] = {
    "auto": None,
    "teacher": TEACHER_BACKBONE_PREFIX,
    "student": BACKBONE_PREFIX,
}

_ARCHITECTURE_HELP = "backbone name (see lightly_grpo.backbones.build_backbone)"


@dataclass
class TrainerConfig:
    """Lightning Trainer settings shared by the training steps."""

    accelerator: str = option("auto", "Lightning accelerator: auto, cpu, gpu, ...")
    devices: str = option(
        "1", "Lightning devices per node: a count, 'auto', '-1' (all) or a list such as '0,1'"
    )
    num_nodes: int = option(1, "Lightning num_nodes: machines of a multi-node DDP run")
    strategy: str = option("auto", "Lightning strategy: auto, ddp, ddp_spawn, fsdp, ...")
    precision: str = option("32-true", "Lightning precision, e.g. 32-true, bf16-mixed")
    progress: bool = option(True, "show progress bars (--no-progress hides them)")


@dataclass
class PretrainConfig:
    """Self-supervised pretraining (default: SimCLR from lightly's transform, head and loss)."""

    out_dir: str = option("runs/simclr", "pretraining run folder", flag="--pretrain-out")
    architecture: str = option("resnet18_small", _ARCHITECTURE_HELP)
    epochs: int = option(10, "pretraining epochs", flag="--pretrain-epochs")
    batch_size: int = option(256, "pretraining batch size", flag="--pretrain-batch-size")
    max_images: int | None = option(
        None,
        "unlabeled train images to pretrain on ('all' for every one)",
        flag="--pretrain-images",
    )
    lr: float = owned_option(SimCLRModule, "lr", "pretraining learning rate", flag="--pretrain-lr")
    temperature: float = owned_option(
        SimCLRModule, "temperature", "NT-Xent temperature", flag="--pretrain-temperature"
    )
    method: str = option(
        "simclr", "pretraining method (lightly_grpo.pretrain)", choices=tuple(PRETRAIN_METHODS)
    )
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


@dataclass
class EvalConfig:
    """What the evaluation embeds: the kNN bank (train split) and the queries (test split)."""

    max_train_images: int | None = option(
        None, "train images in the kNN bank ('all' for every one)", flag="--eval-train-images"
    )
    max_test_images: int | None = option(
        None, "test images used as queries ('all' for every one)", flag="--eval-test-images"
    )
    batch_size: int = option(512, "batch size when embedding", flag="--eval-batch-size")
    grid_queries: int = option(8, "query rows of the report's retrieval grid")


@dataclass
class UnlabeledConfig:
    """The images of the output sets trained without labels (``--output-set neighbors/kmeans``)."""

    images: int | None = option(
        None,
        "train-split images used without labels by --output-set neighbors/kmeans (all)",
        flag="--unlabeled-images",
    )
    refresh_every: int = option(
        0, "rebuild the unlabeled output set from the current model every N epochs (0: never)"
    )


@dataclass
class NeighborsConfig:
    """``--output-set neighbors``: in-batch groups with rewarded reference-space neighbours."""

    num_neighbors: int = owned_option(
        NeighborOutputSet, "num_neighbors", "reference-space neighbours per image"
    )
    neighbor_reward: float = owned_option(
        neighbor_reward,
        "neighbor",
        "reward of a reference-space neighbour (the image's other view gets 1)",
    )
    train_classes: list[int] | None = option(
        None,
        "retrieval on unseen classes: train with the labels of these classes only (same-class "
        "candidates are correct) and evaluate on the other classes",
    )


@dataclass
class KMeansConfig:
    """``--output-set kmeans``: balanced k-means centroids."""

    num_clusters: int | None = option(None, "k-means centroids (default: the number of classes)")


@dataclass
class PosttrainConfig:
    """GRPO-RM post-training on a labeled share of the train split."""

    checkpoint: str = option(
        "runs/simclr/simclr.ckpt",
        "SimCLR .ckpt, lightly recipe .ckpt or state_dict",
        flag="checkpoint",
    )
    trust_checkpoint: bool = option(
        False,
        "load the checkpoint with torch.load(weights_only=False), which can run code stored in "
        "the file: only for files from a trusted source (default: weights only)",
    )
    out_dir: str = option("runs/grpo", "run folder (report, checkpoints)", flag="--out")
    architecture: str = option("resnet18_small", _ARCHITECTURE_HELP)
    backbone_from: str = option(
        "auto",
        "which backbone of a teacher-student (DINO) checkpoint to post-train: its teacher, its "
        "student, or auto (the teacher if there is one, else the checkpoint's backbone)",
        choices=tuple(CHECKPOINT_BACKBONES),
    )
    label_fraction: float = option(0.1, "share of the train split used as labeled images")
    epochs: int = option(20, "post-training epochs")
    batch_size: int = option(256, "post-training batch size")
    augment: str = option(
        "light",
        "labeled-image augmentation: none, light (crop + flip) or simclr (two views)",
        choices=POSTTRAIN_AUGMENTATIONS,
    )
    temperature: float = owned_option(
        GRPORMPolicyLoss, "temperature", "policy temperature (similarity / T)"
    )
    accuracy_reward: float = owned_option(build_reward, "accuracy", "weight of the accuracy reward")
    uniformity_reward: float | None = option(
        None,
        "lambda of the uniformity reward (-lambda pi_old on wrong outputs); 0 disables; default "
        f"{DEFAULT_UNIFORMITY_WEIGHT} for classes and kmeans, {IN_BATCH_UNIFORMITY_WEIGHT} for "
        "neighbors",
    )
    uniformity_form: str = owned_option(
        UniformityReward, "form", "form of the uniformity reward", choices=UniformityReward.FORMS
    )
    clip_eps: float = owned_option(
        GRPORMPolicyLoss, "clip_eps", "PPO clip epsilon (acts with --inner-steps > 1)"
    )
    beta: float = owned_option(GRPORMPolicyLoss, "beta", "reference KL weight")
    inner_steps: int = owned_option(GRPORMStage, "inner_steps", "optimizer steps per batch")
    group_size: int | None = owned_option(
        GRPORMPolicyLoss,
        "group_size",
        "outputs per group ('none' for all classes); the number of draws of --estimator sampled",
    )
    estimator: str = owned_option(
        GRPORMPolicyLoss,
        "estimator",
        "how a query's group is weighted: uniform (every output once), sampled (--group-size "
        "draws with replacement from pi_old, as GRPO samples answers) or expected (pi_old, the "
        "exact expectation of sampled); docs/method.md 7.1",
        choices=ESTIMATORS,
    )
    normalize_std: bool = owned_option(
        GRPORMPolicyLoss,
        "normalize_std",
        "divide advantages by the group's standard deviation (--no-normalize-std: Dr. GRPO)",
    )
    lr_backbone: float = owned_option(PostTrainingModule, "lr_backbone", "backbone learning rate")
    lr_criterion: float = owned_option(
        PostTrainingModule,
        "lr_criterion",
        "learning rate of the criterion's parameters: GRPO-RM's prototypes, a baseline's head "
        "or proxies (--lr-prototypes in 0.2)",
        aliases=("--lr-prototypes",),
    )
    weight_decay: float = owned_option(PostTrainingModule, "weight_decay", "AdamW weight decay")
    warmup_steps: int = owned_option(
        PostTrainingModule, "warmup_steps", "linear warmup steps of the cosine schedule"
    )
    batchnorm: str = owned_option(
        PostTrainingModule, "batchnorm", "BatchNorm statistics policy", choices=BATCHNORM_MODES
    )
    compile_loss: bool = owned_option(
        GRPORMPolicyLoss, "compile_math", "torch.compile the loss's fused math"
    )
    baselines: list[str] = option(
        [],
        "methods of lightly_grpo.methods (e.g. ce-linear, supcon) trained beside GRPO-RM from the "
        "same checkpoint on the same labeled images, epochs and settings, for the report "
        "('none' for none)",
    )
    resume: bool = option(
        False,
        "continue the interrupted run in --out from its last checkpoint (model, optimizer, "
        "schedule, output set, data order, random states); same settings as the first run",
    )
    output_set: str = option(
        "classes",
        "what the policy chooses among: classes (labeled, the paper's setting), or, trained "
        "without labels, neighbors (the other view of the image, rewarded neighbours) or kmeans "
        "(balanced k-means centroids)",
        choices=("classes", "neighbors", "kmeans"),
    )
    val_images: int | None = option(
        2000,
        "train-split images held out from the labeled ones for the per-epoch validation "
        "accuracy curve; nothing is selected on them (0 disables, 'all' holds out a fifth)",
    )
    unlabeled: UnlabeledConfig = field(default_factory=UnlabeledConfig)
    neighbors: NeighborsConfig = field(default_factory=NeighborsConfig)
    kmeans: KMeansConfig = field(default_factory=KMeansConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


@dataclass
class EvaluateConfig:
    """The ``evaluate`` command: checkpoints to evaluate side by side (protocol sizes: ``eval``)."""

    checkpoints: list[str] = option([], "one checkpoint, or several to compare", flag="checkpoints")
    names: list[str] | None = option(None, "display names, one per checkpoint")
    trust_checkpoint: bool = option(
        False,
        "load the checkpoints with torch.load(weights_only=False), which can run code stored in "
        "a file: only for files from a trusted source (default: weights only)",
    )
    architecture: str = option("resnet18_small", _ARCHITECTURE_HELP)
    out_dir: str = option("runs/eval", "report folder", flag="--out")
    device: str = option("auto", "Lightning accelerator name, or e.g. cuda:1")
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


@dataclass
class DemoConfig:
    """The ``demo`` command: pretraining, then post-training of its checkpoint and the report.

    The shared flags (``--architecture``, data and trainer flags) set both steps.
    """

    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    posttrain: PosttrainConfig = field(default_factory=PosttrainConfig)
    unlabeled_images: int = option(
        0,
        "after the labeled run, post-train the same checkpoint without labels "
        "(--output-set neighbors, against continued SimCLR) on this many train images into "
        "<out>/unlabeled; 0 skips it",
        flag="--demo-unlabeled-images",
    )


#: The demo's sizes: an overlay on :class:`DemoConfig`'s defaults, applied before ``--config`` and
#: the flags. Sized so that ``make demo`` (set-up included) finishes within 10 minutes on the
#: slower 2-core CPU of this project's machines (an AMD EPYC without AVX-512, where a ResNet-18
#: SimCLR step of 256 image pairs takes ~4 s); README and recipes/benchmarks/RESULTS.md give the
#: measured time. Images stay at Fashion-MNIST's native 28 pixels (no resize).
DEMO_OVERLAY: dict[str, Any] = {
    "pretrain": {
        "epochs": 3,
        "max_images": 3072,
        "batch_size": 256,
        "data": {"input_size": 28},
    },
    "posttrain": {
        "out_dir": "runs/demo",
        "epochs": 3,
        "label_fraction": 0.05,
        "batch_size": 128,
        "val_images": 500,
        "baselines": ["ce-linear"],
        "data": {"input_size": 28},
        "eval": {"max_train_images": 5000, "max_test_images": 3000},
    },
    "unlabeled_images": 1024,
}

__all__ = [
    "CHECKPOINT_BACKBONES",
    "DEMO_OVERLAY",
    "DataConfig",
    "DemoConfig",
    "EvalConfig",
    "EvaluateConfig",
    "KMeansConfig",
    "NeighborsConfig",
    "PosttrainConfig",
    "PretrainConfig",
    "TrainerConfig",
    "UnlabeledConfig",
    "default_of",
    "option",
    "owned_option",
]
