"""The post-training chain: GRPO-RM on a labeled share of the train split, then the report that
compares the pretrained backbone with the post-trained one (method: ``docs/method.md``)."""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch import nn
from torch.utils.data import DataLoader, Subset

from lightly_grpo.backbones import backbone_output_dim, export_backbone, load_backbone
from lightly_grpo.chains.config import PosttrainConfig
from lightly_grpo.chains.evaluate import (
    RunOutputs,
    backbone_embed_fn,
    eval_split,
    evaluate_embeddings,
    evaluation_data,
    report_models,
)
from lightly_grpo.chains.flags import RUN_FACTS_KEY
from lightly_grpo.chains.runtime import EpochHistory, make_trainer, prepare_run
from lightly_grpo.data import (
    dataset_labels,
    labeled_subset,
    make_loader,
    posttrain_transform,
    resolve_dataset,
    subset,
)
from lightly_grpo.embedding import eval_mode
from lightly_grpo.losses import GRPORMClassificationLoss
from lightly_grpo.rewards import build_reward
from lightly_grpo.stage import GRPORMStage


@dataclass
class LabeledData:
    """The labeled share of the train split that post-training sees.

    Attributes:
        train: Augmented labeled images, shuffled (the training batches).
        init: The same images through the eval transform (the class means of the prototypes).
        size: Number of labeled images.
        num_classes: Number of classes of the train split.
    """

    train: DataLoader[Any]
    init: DataLoader[Any]
    size: int
    num_classes: int


def labeled_data(cfg: PosttrainConfig) -> LabeledData:
    """A class-balanced ``label_fraction`` of the train split, as training and init loaders."""
    data = cfg.data
    labels = dataset_labels(resolve_dataset(data.dataset, "train", None, root=data.data_root))
    indices = labeled_subset(labels, cfg.label_fraction, seed=data.seed).tolist()
    transform = posttrain_transform(cfg.augment, data.input_size, data.in_channels)
    train = Subset(resolve_dataset(data.dataset, "train", transform, root=data.data_root), indices)
    return LabeledData(
        train=make_loader(
            train,
            min(cfg.batch_size, len(indices)),
            shuffle=True,
            drop_last=True,
            num_workers=data.num_workers,
        ),
        init=make_loader(
            Subset(eval_split(data, "train"), indices), cfg.eval.batch_size, shuffle=False
        ),
        size=len(indices),
        num_classes=int(labels.max()) + 1,
    )


def validation_loader(cfg: PosttrainConfig) -> DataLoader[Any] | None:
    """Test images for the per-epoch policy accuracy (the curve beside train accuracy)."""
    if cfg.val_images == 0:
        return None
    test = subset(eval_split(cfg.data, "test"), cfg.val_images, cfg.data.seed + 4)
    return make_loader(test, cfg.eval.batch_size, shuffle=False)


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
        reward=build_reward(cfg.accuracy_reward, cfg.uniformity_reward, cfg.uniformity_form),
        clip_eps=cfg.clip_eps,
        beta=cfg.beta,
        group_size=cfg.group_size,
        compile_math=cfg.compile_loss,
    )
    return GRPORMStage(
        backbone,
        criterion=criterion,
        inner_steps=cfg.inner_steps,
        lr_backbone=cfg.lr_backbone,
        lr_prototypes=cfg.lr_prototypes,
        weight_decay=cfg.weight_decay,
        batchnorm=cfg.batchnorm,
    )


def fit_stage(
    trainer: pl.Trainer, stage: GRPORMStage, labeled: LabeledData, cfg: PosttrainConfig
) -> float:
    """Initialises the prototypes, trains, and leaves the stage in eval mode on the trainer's
    device (with re-estimated BatchNorm statistics for ``batchnorm="recompute"``).

    Returns:
        The training time in seconds.
    """
    device = trainer.strategy.root_device
    stage.to(device).init_prototypes(labeled.init)
    started = time.perf_counter()
    stage.train()  # a loaded backbone arrives in eval mode
    trainer.fit(stage, labeled.train, validation_loader(cfg))
    seconds = time.perf_counter() - started
    stage.to(device)  # Lightning's teardown moves the module back to the CPU
    if cfg.batchnorm == "recompute":
        batch = cfg.eval.batch_size
        unlabeled = subset(eval_split(cfg.data, "train"), 50 * batch, cfg.data.seed + 3)
        stage.recompute_batchnorm(make_loader(unlabeled, batch, shuffle=False))
    stage.eval()
    return seconds


def posttrain(cfg: PosttrainConfig, evaluate: bool = True) -> RunOutputs:
    """Loads a pretrained backbone, post-trains it with GRPO-RM and, when ``evaluate``, evaluates
    the pretrained and the post-trained model and writes the report.

    Writes ``grpo.ckpt``, ``backbone.pt`` and ``config.json`` (the config plus, under ``"run"``,
    the labeled image count and training time) to ``cfg.out_dir``.

    Examples:
        >>> cfg = PosttrainConfig(checkpoint="runs/simclr/simclr.ckpt")
        >>> outputs = posttrain(cfg)  # doctest: +SKIP
        >>> outputs.metrics["GRPO-RM"]["policy_accuracy"]  # doctest: +SKIP
    """
    out_dir = prepare_run(cfg.out_dir, cfg.data.seed)
    labeled = labeled_data(cfg)
    backbone = load_backbone(cfg.checkpoint, cfg.architecture, in_channels=cfg.data.in_channels)
    reference = copy.deepcopy(backbone)  # the pretrained backbone, evaluated beside the result
    stage = build_stage(cfg, backbone, labeled.num_classes)
    history = EpochHistory()
    trainer = make_trainer(cfg.trainer, out_dir, cfg.epochs, [history])
    train_seconds = fit_stage(trainer, stage, labeled, cfg)
    trainer.save_checkpoint(out_dir / "grpo.ckpt")
    outputs = RunOutputs(
        checkpoint=out_dir / "grpo.ckpt",
        backbone=export_backbone(stage.backbone, out_dir / "backbone.pt"),
        history=history.rows,
    )
    config = asdict(cfg)
    config[RUN_FACTS_KEY] = {
        "labeled_images": labeled.size,
        "train_seconds": round(train_seconds, 1),
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    if evaluate:
        evaluate_posttrained(cfg, stage, reference, outputs, config)
    return outputs


def evaluate_posttrained(
    cfg: PosttrainConfig,
    stage: GRPORMStage,
    reference: nn.Module,
    outputs: RunOutputs,
    config: dict[str, Any],
) -> None:
    """Evaluates the pretrained ``reference`` and the post-trained ``stage`` and writes the
    report; fills ``outputs.results`` and ``outputs.report``."""
    device = stage.device
    data = evaluation_data(cfg.data, cfg.eval)
    with eval_mode(reference.to(device)):
        pretrained = evaluate_embeddings(
            "SimCLR backbone", backbone_embed_fn(reference), data, cfg.eval, device
        )
    output_set = stage.criterion.output_set
    with eval_mode(stage):
        posttrained = evaluate_embeddings(
            "GRPO-RM",
            stage.forward,
            data,
            cfg.eval,
            device,
            policy=lambda z: output_set.predict(z.to(device)).cpu(),
        )
    evaluations = {"SimCLR backbone": pretrained, "GRPO-RM": posttrained}
    outputs.report = report_models(
        evaluations,
        data,
        Path(cfg.out_dir),
        "GRPO-RM post-training report",
        outputs.history,
        config,
        cfg.eval.grid_queries,
    )
    outputs.results = {name: e.result for name, e in evaluations.items()}


__all__ = [
    "LabeledData",
    "build_stage",
    "evaluate_posttrained",
    "fit_stage",
    "labeled_data",
    "posttrain",
    "validation_loader",
]
