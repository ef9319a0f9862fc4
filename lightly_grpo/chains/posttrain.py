"""The post-training run: one sequence for every output set, GRPO-RM and every baseline.

``posttrain`` loads a pretrained backbone, asks the recipe of ``cfg.output_set``
(:mod:`lightly_grpo.chains.recipes`) for the data, the criterion, the callbacks and the extra
metrics, trains GRPO-RM and the requested baselines through :func:`fit_stage`, evaluates every
model beside the pretrained backbone and writes the report (method: ``docs/method.md``).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from lightly_grpo.backbones import backbone_output_dim, export_backbone, load_backbone
from lightly_grpo.chains.config import CHECKPOINT_BACKBONES, PosttrainConfig
from lightly_grpo.chains.evaluate import (
    ClassifierFn,
    EmbeddingEvaluation,
    EvaluationData,
    RunOutputs,
    backbone_embed_fn,
    evaluate_embeddings,
    report_models,
)
from lightly_grpo.chains.flags import RUN_FACTS_KEY
from lightly_grpo.chains.recipes import (
    OutputSetRecipe,
    TrainData,
    bn_loader,
    output_set_recipe,
    shuffled_loader,
)
from lightly_grpo.chains.runtime import (
    EpochHistory,
    check_not_posttrained,
    make_trainer,
    prepare_run,
    resume_from,
    save_final_checkpoint,
)
from lightly_grpo.distributed import is_global_zero
from lightly_grpo.embedding import EmbedFn, eval_mode
from lightly_grpo.evaluation import RetrievalEvaluator
from lightly_grpo.methods import build_method, grpo_stage, method_spec
from lightly_grpo.posttraining import PostTrainingModule
from lightly_grpo.pretrain.simclr import SimCLRModule
from lightly_grpo.stage import GRPORMStage

#: The report's name of the checkpoint's backbone before post-training.
PRETRAINED_NAME = "Pretrained backbone"
#: The ``--baselines`` name and the report's name of continued SimCLR training.
SIMCLR = "simclr"
SIMCLR_BASELINE = "continued SimCLR"


def load_posttrain_backbone(cfg: PosttrainConfig) -> nn.Module:
    """The backbone of ``cfg.checkpoint`` that the run post-trains."""
    return load_backbone(
        cfg.checkpoint,
        cfg.architecture,
        in_channels=cfg.data.in_channels,
        prefix=CHECKPOINT_BACKBONES[cfg.backbone_from],
        trusted=cfg.trust_checkpoint,
    )


def embedding_size(cfg: PosttrainConfig, backbone: nn.Module) -> int:
    """The backbone's embedding size, measured with one dummy image of the configured shape."""
    shape = (cfg.data.in_channels, cfg.data.input_size, cfg.data.input_size)
    return backbone_output_dim(backbone, shape)


def build_stage(
    cfg: PosttrainConfig,
    backbone: nn.Module,
    data: TrainData,
    recipe: OutputSetRecipe | None = None,
) -> GRPORMStage:
    """The GRPO-RM stage of a config: the recipe's criterion (output set and reward) inside the
    config's optimisation settings, untrained and uninitialised."""
    recipe = recipe or output_set_recipe(cfg.output_set)
    criterion = recipe.criterion(cfg, embedding_size(cfg, backbone), data)
    return grpo_stage(cfg, backbone, criterion)


def fit_stage(
    trainer: pl.Trainer,
    module: pl.LightningModule,
    train: DataLoader[Any] | Callable[[], DataLoader[Any]],
    validation: DataLoader[Any] | None = None,
    ckpt_path: str | None = None,
    initialize: Callable[[], None] | None = None,
    batchnorm_images: Callable[[], DataLoader[Any]] | None = None,
) -> tuple[float, float]:
    """The one fit sequence of GRPO-RM, every baseline and continued SimCLR.

    Moves the module to the trainer's device, initialises its criterion (``initialize``: class
    means, the bank of an unlabeled output set), trains, and leaves the module in eval mode on
    that device, with BatchNorm statistics re-estimated on ``batchnorm_images()`` (unlabeled
    images) for a module with ``batchnorm="recompute"``. ``train``
    is the training loader, or a function that builds it once the criterion is initialised (a
    loader mined from the output set). From
    ``ckpt_path`` (a resumed run) Lightning restores the weights, the output set, the optimizer,
    the schedule, the loop position, and through the callbacks the history and RNG.

    Returns:
        ``(init_seconds, train_seconds)``.
    """
    device = trainer.strategy.root_device
    module.to(device)
    started = time.perf_counter()
    if initialize is not None:
        initialize()
    init_seconds = time.perf_counter() - started
    loader = train if isinstance(train, DataLoader) else train()
    if isinstance(module, PostTrainingModule):
        # A loaded backbone arrives in eval mode; train() applies the BatchNorm policy. Other
        # modules (continued SimCLR) train in the modes they were built in: its loaded backbone
        # keeps BatchNorm in eval mode, like GRPO-RM's default batchnorm="freeze".
        module.train()
    trainer.fit(module, loader, validation, ckpt_path=ckpt_path)
    train_seconds = time.perf_counter() - started - init_seconds
    module.to(device)  # Lightning's teardown moves the module back to the CPU
    if isinstance(module, PostTrainingModule) and module.batchnorm == "recompute":
        if batchnorm_images is None:
            raise ValueError("batchnorm='recompute' needs images to re-estimate the statistics on")
        module.recompute_batchnorm(batchnorm_images())
    module.eval()
    return init_seconds, train_seconds


def baseline_names(cfg: PosttrainConfig, recipe: OutputSetRecipe | None = None) -> list[str]:
    """The configured baselines, checked against the recipe's and
    :data:`lightly_grpo.methods.METHODS` before any training.

    Raises:
        ValueError: For an unknown method name (the message lists the known ones), a labeled
            method in a run without labels, or continued SimCLR without a SimCLR checkpoint.
    """
    recipe = recipe or output_set_recipe(cfg.output_set)
    names = [name for name in cfg.baselines if name.lower() != "none"]
    for name in names:
        if name == SIMCLR and SIMCLR in recipe.unlabeled_baselines:
            check_simclr_checkpoint(cfg.checkpoint)
        elif recipe.accepts_methods(cfg):
            method_spec(name)  # raises for an unknown method name
        else:
            raise ValueError(
                f"unknown unlabeled baseline {name!r}: without labels the baselines are "
                f"{list(recipe.unlabeled_baselines)} (labeled methods need --train-classes)"
            )
    return names


def check_simclr_checkpoint(path: str) -> None:
    """Continuing SimCLR needs the checkpoint's projection head: fail before any training."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, ValueError) as error:
        raise ValueError(
            f"cannot read checkpoint {path!r} for --baselines simclr: {error}"
        ) from None
    keys = state.get("state_dict", {}) if isinstance(state, dict) else {}
    if not any(key.startswith("projection_head.") for key in keys):
        raise ValueError(
            f"--baselines simclr continues a SimCLR checkpoint with its projection head; "
            f"{path!r} has none (a DINO checkpoint or a bare backbone?)"
        )


def fit_baseline(
    name: str,
    cfg: PosttrainConfig,
    pretrained: nn.Module,
    data: TrainData,
    out_dir: Path,
) -> PostTrainingModule:
    """Trains the method ``name`` from a copy of ``pretrained`` as GRPO-RM trains: the same
    images in the same order, epochs, learning rates, weight decay and BatchNorm policy
    (``recompute`` included), from the same seed.

    Returns:
        The trained module, in eval mode on the trainer's device.
    """
    backbone = copy.deepcopy(pretrained)
    size = embedding_size(cfg, backbone)
    # Seeded before the head exists, so a baseline does not depend on what trained before it.
    pl.seed_everything(cfg.data.seed, workers=True, verbose=False)
    module = build_method(name, backbone, data.num_classes, size, cfg)
    assert data.train is not None
    generator = data.train.generator
    if generator is not None:  # rewind the shuffling: the same batches as GRPO-RM's run
        generator.manual_seed(cfg.data.seed)
    folder = out_dir / "baselines" / name
    trainer = make_trainer(cfg.trainer, folder, cfg.epochs)
    fit_stage(
        trainer,
        module,
        data.train,
        data.validation,
        resume_from(cfg.resume, folder),
        lambda: module.init_criterion(data.init),
        lambda: bn_loader(cfg),
    )
    return module


def continued_simclr(cfg: PosttrainConfig) -> SimCLRModule:
    """The checkpoint's SimCLR model (backbone and projection head) to continue training."""
    return SimCLRModule.load_from_checkpoint(
        cfg.checkpoint,
        map_location="cpu",
        weights_only=True,
        backbone=load_posttrain_backbone(cfg),
        lr=cfg.lr_backbone,
        # Under DDP its negatives are the global batch, as GRPO-RM's groups are.
        gather_distributed=True,
    )


def fit_simclr(cfg: PosttrainConfig, data: TrainData, out_dir: Path, steps: int) -> nn.Module:
    """Continues SimCLR for ``steps`` steps on the same images and views; returns its backbone."""
    pl.seed_everything(cfg.data.seed, workers=True)
    module = continued_simclr(cfg)
    assert data.items is not None
    loader = shuffled_loader(cfg, data.items)
    # As many steps of the same batch size as GRPO-RM took (a neighbour-mined epoch holds more
    # batches than a plain one), however many epochs that is.
    folder = out_dir / "baselines" / SIMCLR
    trainer = make_trainer(cfg.trainer, folder, -1, max_steps=steps)
    fit_stage(trainer, module, loader, ckpt_path=resume_from(cfg.resume, folder))
    return module.backbone


#: A model to evaluate: its embedding function, the module put in eval mode, its classifier.
_Model = tuple[EmbedFn, nn.Module, ClassifierFn | None]


def posttrain(cfg: PosttrainConfig, evaluate: bool = True) -> RunOutputs:
    """Loads a pretrained backbone, post-trains it with GRPO-RM on the output set
    ``cfg.output_set`` (and trains the requested baselines) and, when ``evaluate``, evaluates
    the pretrained and every post-trained model and writes the report.

    Writes ``grpo.ckpt``, ``backbone.pt`` and ``config.json`` (the config plus, under ``"run"``,
    the image count, steps and training time) to ``cfg.out_dir``; with ``evaluate`` also
    ``metrics.json`` and ``report.html``.

    Examples:
        >>> cfg = PosttrainConfig(checkpoint="runs/simclr/simclr.ckpt")
        >>> outputs = posttrain(cfg)  # doctest: +SKIP
        >>> outputs.metrics["GRPO-RM"]["classifier_accuracy"]  # doctest: +SKIP
    """
    recipe = output_set_recipe(cfg.output_set)
    recipe.check(cfg)
    baselines = baseline_names(cfg, recipe)  # unknown names fail before any training
    check_not_posttrained(cfg.checkpoint)
    out_dir = prepare_run(cfg.out_dir, cfg.data.seed)
    data = recipe.data(cfg)
    backbone = load_posttrain_backbone(cfg)
    reference = copy.deepcopy(backbone)  # the pretrained backbone, evaluated beside the result
    # Resolved before training: a broken evaluation image is reported (and skipped) now, not
    # after hours of training.
    eval_data = recipe.evaluation_data(cfg) if evaluate else None
    stage = build_stage(cfg, backbone, data, recipe)
    history = EpochHistory()
    trainer = make_trainer(
        cfg.trainer,
        out_dir,
        cfg.epochs,
        [history, *recipe.callbacks(cfg, data)],
        use_distributed_sampler=recipe.use_distributed_sampler(cfg),
    )
    init_seconds, train_seconds = fit_stage(
        trainer,
        stage,
        lambda: recipe.loader(cfg, data, stage),
        data.validation,
        resume_from(cfg.resume, out_dir),
        lambda: recipe.initialize(stage, cfg, data),
        lambda: bn_loader(cfg),
    )
    outputs = RunOutputs(
        checkpoint=save_final_checkpoint(trainer, out_dir / "grpo.ckpt"),  # collective under DDP
        backbone=out_dir / "backbone.pt",
        history=history.rows,
    )
    config = asdict(cfg)
    config[RUN_FACTS_KEY] = {
        **recipe.run_facts(data),
        "steps": trainer.global_step,
        "train_seconds": round(train_seconds, 1),
        "output_set_init_seconds": round(init_seconds, 1),
    }
    if is_global_zero():  # under DDP every rank holds the same weights; rank 0 writes
        export_backbone(stage.backbone, out_dir / "backbone.pt")
        (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    models: dict[str, _Model] = {PRETRAINED_NAME: (backbone_embed_fn(reference), reference, None)}
    for name in baselines:
        if name == SIMCLR and SIMCLR in recipe.unlabeled_baselines:
            # As many batches as GRPO-RM saw (global_step counts its inner steps too).
            simclr = fit_simclr(cfg, data, out_dir, trainer.global_step // stage.inner_steps)
            models[SIMCLR_BASELINE] = (backbone_embed_fn(simclr), simclr, None)
        else:
            module = fit_baseline(name, cfg, reference, recipe.baseline_data(cfg, data), out_dir)
            models[name] = _model(module, recipe.labeled)
    models["GRPO-RM"] = _model(stage, recipe.labeled)  # last: the report's delta is last - first
    if evaluate:
        assert eval_data is not None
        evaluations = evaluate_models(
            cfg,
            models,
            eval_data,
            trainer.strategy.root_device,
            recipe.extra_metrics(cfg, stage),
            recipe.evaluator(cfg),
        )
        if evaluations is None:
            return outputs  # a DDP rank other than 0: it embedded its shards; rank 0 reports
        outputs.report = report_models(
            evaluations,
            eval_data,
            out_dir,
            recipe.report_title(cfg),
            outputs.history,
            config,
            cfg.eval.grid_queries,
        )
        outputs.results = {name: e.result for name, e in evaluations.items()}
    return outputs


def _model(module: PostTrainingModule, labeled: bool) -> _Model:
    """A trained module as the evaluation sees it: its classifier only in labeled runs (an
    unlabeled or unseen-class run has no classes the head was trained on)."""
    if labeled:
        return module.forward, module, module.classifier_fn()
    return backbone_embed_fn(module.backbone), module.backbone, None


@torch.no_grad()
def evaluate_models(
    cfg: PosttrainConfig,
    models: dict[str, _Model],
    data: EvaluationData,
    device: torch.device,
    extra: Callable[[str, torch.Tensor, torch.Tensor], dict[str, float]] | None = None,
    evaluator: RetrievalEvaluator | None = None,
) -> dict[str, EmbeddingEvaluation] | None:
    """Every model's evaluation (``evaluator``'s metrics) plus the recipe's ``extra`` metrics;
    None on a DDP rank other than 0 (every rank embeds its shard, rank 0 scores)."""
    evaluations = {}
    for name, (embed, module, classifier) in models.items():
        module.to(device)
        with eval_mode(module):
            evaluation = evaluate_embeddings(
                name, embed, data, cfg.eval, device, classifier=classifier, evaluator=evaluator
            )
        if evaluation is None:
            continue  # not rank 0; the next model's embedding still needs this rank's shard
        if extra is not None:
            evaluation.result.metrics.update(extra(name, evaluation.embeddings, evaluation.labels))
        evaluations[name] = evaluation
    return evaluations if len(evaluations) == len(models) else None


__all__ = [
    "PRETRAINED_NAME",
    "SIMCLR_BASELINE",
    "baseline_names",
    "build_stage",
    "continued_simclr",
    "embedding_size",
    "evaluate_models",
    "fit_baseline",
    "fit_simclr",
    "fit_stage",
    "load_posttrain_backbone",
    "posttrain",
]
