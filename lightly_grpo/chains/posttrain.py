"""The post-training chain: GRPO-RM on a labeled share of the train split, then the report that
compares the pretrained backbone with the post-trained one (method: ``docs/method.md``)."""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from torch import nn
from torch.utils.data import DataLoader, Subset

from lightly_grpo.backbones import backbone_output_dim, export_backbone, load_backbone
from lightly_grpo.chains.config import CHECKPOINT_BACKBONES, PosttrainConfig, uniformity_weight
from lightly_grpo.chains.evaluate import (
    EvaluationData,
    RunOutputs,
    backbone_embed_fn,
    eval_split,
    evaluate_embeddings,
    evaluation_data,
    report_models,
)
from lightly_grpo.chains.flags import RUN_FACTS_KEY
from lightly_grpo.chains.runtime import (
    EpochHistory,
    check_not_posttrained,
    make_trainer,
    prepare_run,
    resume_from,
    save_final_checkpoint,
)
from lightly_grpo.data import (
    check_training_data,
    dataset_labels,
    labeled_subset,
    make_loader,
    posttrain_transform,
    resolve_dataset,
    split_validation,
    subset,
)
from lightly_grpo.distributed import is_global_zero
from lightly_grpo.embedding import eval_mode
from lightly_grpo.losses import GRPORMClassificationLoss, GRPORMPolicyLoss
from lightly_grpo.methods import MethodSettings, build_method, method_spec
from lightly_grpo.posttraining import PostTrainingModule
from lightly_grpo.rewards import build_reward
from lightly_grpo.stage import GRPORMStage

#: The report's name of the checkpoint's backbone before post-training.
PRETRAINED_NAME = "Pretrained backbone"


@dataclass
class LabeledData:
    """The labeled share of the train split that post-training sees, and its validation images.

    Attributes:
        train: Augmented labeled images, shuffled by the training seed (the training batches).
        init: The same images through the eval transform (the class means of the prototypes).
        size: Number of labeled images.
        num_classes: Number of classes of the train split.
        validation: Held-out train-split images (eval transform), disjoint from the labeled ones,
            for the per-epoch validation accuracy; None when ``val_images`` is 0.
    """

    train: DataLoader[Any]
    init: DataLoader[Any]
    size: int
    num_classes: int
    validation: DataLoader[Any] | None = None


def labeled_data(cfg: PosttrainConfig) -> LabeledData:
    """A class-balanced ``label_fraction`` of the train split, as training and init loaders, plus
    ``val_images`` validation images of the train split that are never trained on.

    Which images are picked depends on ``data.data_seed`` only; the shuffling follows
    ``data.seed``. Validation images are held out first, so the labeled images come from the
    rest and a run never validates on an image it trained on (nor on a test image).
    """
    data = cfg.data
    train_split = resolve_dataset(
        data.dataset, "train", None, root=data.data_root, seed=data.data_seed
    )
    labels = dataset_labels(train_split)
    val_size = len(labels) // 5 if cfg.val_images is None else cfg.val_images
    val_size = min(val_size, len(labels) // 2)  # never more than half of a small train split
    validation, pool = (
        split_validation(labels, val_size, seed=data.data_seed)
        if val_size > 0
        else (np.zeros(0, dtype=np.int64), np.arange(len(labels)))
    )
    indices = labeled_subset(labels, cfg.label_fraction, seed=data.data_seed, base=pool).tolist()
    transform = posttrain_transform(cfg.augment, data.input_size, data.in_channels)
    train = Subset(
        resolve_dataset(data.dataset, "train", transform, root=data.data_root, seed=data.data_seed),
        indices,
    )
    # An empty or single-class labeled set fails here, with its numbers, before any training.
    # A set smaller than the batch trains in one batch of all its images (the batch is capped).
    check_training_data(train, 1, drop_last=True, min_classes=2, name="labeled training set")
    eval_train = eval_split(data, "train")
    return LabeledData(
        train=make_loader(
            train,
            min(cfg.batch_size, len(indices)),
            shuffle=True,
            drop_last=True,
            num_workers=data.num_workers,
            seed=data.seed,
        ),
        init=make_loader(Subset(eval_train, indices), cfg.eval.batch_size, shuffle=False),
        size=len(indices),
        num_classes=int(labels.max()) + 1,
        validation=(
            make_loader(Subset(eval_train, validation.tolist()), cfg.eval.batch_size, shuffle=False)
            if len(validation)
            else None
        ),
    )


def build_stage(cfg: PosttrainConfig, backbone: nn.Module, num_classes: int) -> GRPORMStage:
    """The GRPORMStage for a config: the one place that maps settings to the stage.

    The criterion (class prototypes as the output set, the configured reward) is built here and
    given to the stage; the embedding size is measured with one dummy image.
    """
    shape = (cfg.data.in_channels, cfg.data.input_size, cfg.data.input_size)
    criterion = GRPORMClassificationLoss(
        num_classes,
        backbone_output_dim(backbone, shape),
        temperature=cfg.temperature,
        reward=build_reward(cfg.accuracy_reward, uniformity_weight(cfg), cfg.uniformity_form),
        clip_eps=cfg.clip_eps,
        beta=cfg.beta,
        group_size=cfg.group_size,
        compile_math=cfg.compile_loss,
    )
    return stage_from_config(cfg, backbone, criterion)


def stage_from_config(
    cfg: PosttrainConfig, backbone: nn.Module, criterion: GRPORMPolicyLoss
) -> GRPORMStage:
    """The stage around a ready criterion with the config's optimisation settings (every
    output set, labeled or not, trains under the same ones)."""
    return GRPORMStage(
        backbone,
        criterion=criterion,
        inner_steps=cfg.inner_steps,
        lr_backbone=cfg.lr_backbone,
        lr_prototypes=cfg.lr_prototypes,
        weight_decay=cfg.weight_decay,
        batchnorm=cfg.batchnorm,
    )


def unlabeled_loader(cfg: PosttrainConfig) -> DataLoader[Any]:
    """Train-split images (eval transform) that re-estimate BatchNorm statistics."""
    batch = cfg.eval.batch_size
    unlabeled = subset(eval_split(cfg.data, "train"), 50 * batch, cfg.data.data_seed + 3)
    return make_loader(unlabeled, batch, shuffle=False)


def fit_stage(
    trainer: pl.Trainer,
    stage: PostTrainingModule,
    labeled: LabeledData,
    cfg: PosttrainConfig,
    ckpt_path: str | None = None,
) -> float:
    """Initialises the criterion (GRPO-RM's prototypes at the class means), trains, and leaves
    the module in eval mode on the trainer's device (with re-estimated BatchNorm statistics for
    ``batchnorm="recompute"``). GRPO-RM and every baseline train through here.

    Returns:
        The training time in seconds.
    """
    device = trainer.strategy.root_device
    stage.to(device).init_criterion(labeled.init)
    started = time.perf_counter()
    stage.train()  # a loaded backbone arrives in eval mode
    # From ckpt_path (a resumed run), Lightning restores the weights, the output set, the
    # optimizer, the schedule, the loop position, and through the callbacks the history and RNG.
    trainer.fit(stage, labeled.train, labeled.validation, ckpt_path=ckpt_path)
    seconds = time.perf_counter() - started
    stage.to(device)  # Lightning's teardown moves the module back to the CPU
    if cfg.batchnorm == "recompute":
        stage.recompute_batchnorm(unlabeled_loader(cfg))
    stage.eval()
    return seconds


def baseline_names(cfg: PosttrainConfig) -> list[str]:
    """The configured baselines, checked against :data:`lightly_grpo.methods.METHODS`.

    Raises:
        ValueError: For an unknown method name (the message lists the known ones).
    """
    names = [name for name in cfg.baselines if name.lower() != "none"]
    for name in names:
        method_spec(name)
    return names


def fit_baseline(
    name: str,
    cfg: PosttrainConfig,
    pretrained: nn.Module,
    labeled: LabeledData,
    out_dir: Path,
) -> PostTrainingModule:
    """Trains the method ``name`` from a copy of ``pretrained`` as GRPO-RM trains: the same
    labeled images in the same order, epochs, learning rates, weight decay and BatchNorm policy
    (``recompute`` included), from the same seed.

    Returns:
        The trained module, in eval mode on the trainer's device.
    """
    settings = MethodSettings(
        lr_backbone=cfg.lr_backbone,
        lr_criterion=cfg.lr_prototypes,
        weight_decay=cfg.weight_decay,
        batchnorm=cfg.batchnorm,
        temperature=cfg.temperature,
        uniformity=uniformity_weight(cfg),
        beta=cfg.beta,
    )
    backbone = copy.deepcopy(pretrained)
    shape = (cfg.data.in_channels, cfg.data.input_size, cfg.data.input_size)
    size = backbone_output_dim(backbone, shape)
    # Seeded before the head exists, so a baseline does not depend on what trained before it.
    pl.seed_everything(cfg.data.seed, workers=True, verbose=False)
    module = build_method(name, backbone, labeled.num_classes, size, settings)
    generator = labeled.train.generator
    if generator is not None:  # rewind the shuffling: the same batches as GRPO-RM's run
        generator.manual_seed(cfg.data.seed)
    folder = out_dir / "baselines" / name
    trainer = make_trainer(cfg.trainer, folder, cfg.epochs)
    fit_stage(trainer, module, labeled, cfg, resume_from(cfg.resume, folder))
    return module


def posttrain(cfg: PosttrainConfig, evaluate: bool = True) -> RunOutputs:
    """Loads a pretrained backbone, post-trains it with GRPO-RM and, when ``evaluate``, evaluates
    the pretrained and the post-trained model and writes the report.

    Writes ``grpo.ckpt``, ``backbone.pt`` and ``config.json`` (the config plus, under ``"run"``,
    the labeled image count and training time) to ``cfg.out_dir``.

    Examples:
        >>> cfg = PosttrainConfig(checkpoint="runs/simclr/simclr.ckpt")
        >>> outputs = posttrain(cfg)  # doctest: +SKIP
        >>> outputs.metrics["GRPO-RM"]["classifier_accuracy"]  # doctest: +SKIP
    """
    if cfg.output_set != "classes":
        from lightly_grpo.chains.unlabeled import posttrain_unlabeled

        return posttrain_unlabeled(cfg, evaluate)
    check_not_posttrained(cfg.checkpoint)
    out_dir = prepare_run(cfg.out_dir, cfg.data.seed)
    baselines = baseline_names(cfg)  # unknown names fail before any training
    labeled = labeled_data(cfg)
    backbone = load_backbone(
        cfg.checkpoint,
        cfg.architecture,
        in_channels=cfg.data.in_channels,
        prefix=CHECKPOINT_BACKBONES[cfg.backbone_from],
        trusted=cfg.trust_checkpoint,
    )
    # Resolved before training: a broken evaluation image is reported (and skipped) now, not
    # after hours of training.
    eval_data = evaluation_data(cfg.data, cfg.eval) if evaluate else None
    reference = copy.deepcopy(backbone)  # the pretrained backbone, evaluated beside the result
    stage = build_stage(cfg, backbone, labeled.num_classes)
    history = EpochHistory()
    trainer = make_trainer(cfg.trainer, out_dir, cfg.epochs, [history])
    train_seconds = fit_stage(trainer, stage, labeled, cfg, resume_from(cfg.resume, out_dir))
    save_final_checkpoint(trainer, out_dir / "grpo.ckpt")  # collective under DDP
    outputs = RunOutputs(
        checkpoint=out_dir / "grpo.ckpt", backbone=out_dir / "backbone.pt", history=history.rows
    )
    config = asdict(cfg)
    config[RUN_FACTS_KEY] = {
        "labeled_images": labeled.size,
        "train_seconds": round(train_seconds, 1),
    }
    if is_global_zero():  # under DDP every rank holds the same weights; rank 0 writes
        export_backbone(stage.backbone, out_dir / "backbone.pt")
        (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    trained = {name: fit_baseline(name, cfg, reference, labeled, out_dir) for name in baselines}
    if evaluate:
        evaluate_posttrained(cfg, stage, reference, outputs, config, trained, eval_data)
    return outputs


def evaluate_posttrained(
    cfg: PosttrainConfig,
    stage: GRPORMStage,
    reference: nn.Module,
    outputs: RunOutputs,
    config: dict[str, Any],
    baselines: dict[str, PostTrainingModule] | None = None,
    data: EvaluationData | None = None,
) -> None:
    """Evaluates the pretrained ``reference``, the post-trained ``stage`` and any trained
    ``baselines`` (method name -> module) and writes the report; fills ``outputs.results`` and
    ``outputs.report``. ``data``: the evaluation splits, when resolved already."""
    device = stage.device
    data = data or evaluation_data(cfg.data, cfg.eval)
    with eval_mode(reference.to(device)):
        evaluations = {
            PRETRAINED_NAME: evaluate_embeddings(
                PRETRAINED_NAME, backbone_embed_fn(reference), data, cfg.eval, device
            )
        }
    # GRPO-RM last: the report's delta column is the last model minus the first (the backbone).
    for name, module in {**(baselines or {}), "GRPO-RM": stage}.items():
        with eval_mode(module):
            evaluations[name] = evaluate_embeddings(
                name,
                module.forward,
                data,
                cfg.eval,
                device,
                classifier=module.classifier_fn(),
            )
    scored = {name: e for name, e in evaluations.items() if e is not None}
    if len(scored) < len(evaluations):
        return  # a DDP rank other than 0: it embedded its shards; rank 0 scores and reports
    outputs.report = report_models(
        scored,
        data,
        Path(cfg.out_dir),
        "GRPO-RM post-training report",
        outputs.history,
        config,
        cfg.eval.grid_queries,
    )
    outputs.results = {name: e.result for name, e in scored.items()}


__all__ = [
    "PRETRAINED_NAME",
    "LabeledData",
    "baseline_names",
    "fit_baseline",
    "build_stage",
    "stage_from_config",
    "evaluate_posttrained",
    "fit_stage",
    "labeled_data",
    "posttrain",
    "unlabeled_loader",
]
