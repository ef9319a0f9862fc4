"""Unlabeled post-training: GRPO-RM with neighbour or k-means output sets, no labels trained on.

``posttrain --output-set neighbors`` (or ``kmeans``) trains on the train split's images without
their labels: two SimCLR views per image, batches mined so that reference-space neighbours share
a batch (neighbours), or balanced swapped assignments to k-means centroids (kmeans). Labels are
used only by the evaluation. ``--baselines simclr`` continues the checkpoint's own SimCLR
training (its projection head included) for the same steps, images and augmentations: the
comparison that decides whether unlabeled GRPO-RM is worth running.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from lightly_grpo.backbones import backbone_output_dim, export_backbone, load_backbone
from lightly_grpo.chains.config import CHECKPOINT_BACKBONES, PosttrainConfig, uniformity_weight
from lightly_grpo.chains.evaluate import (
    EmbeddingEvaluation,
    EvaluationData,
    RunOutputs,
    backbone_embed_fn,
    eval_split,
    evaluate_embeddings,
    evaluation_data,
    report_models,
)
from lightly_grpo.chains.flags import RUN_FACTS_KEY
from lightly_grpo.chains.posttrain import (
    PRETRAINED_NAME,
    LabeledData,
    fit_baseline,
    stage_from_config,
    unlabeled_loader,
)
from lightly_grpo.chains.runtime import (
    EpochHistory,
    check_not_posttrained,
    make_trainer,
    prepare_run,
    resume_from,
    save_final_checkpoint,
)
from lightly_grpo.data import check_training_data, dataset_labels, make_loader, resolve_dataset
from lightly_grpo.data.indexed import IndexedDataset
from lightly_grpo.data.neighbor_sampler import NeighborBatchSampler
from lightly_grpo.data.splits import random_subset
from lightly_grpo.data.transforms import simclr_transform
from lightly_grpo.distributed import is_global_zero
from lightly_grpo.embedding import eval_mode
from lightly_grpo.evaluation.clustering import (
    clustering_scores,
    kmeans_clustering_scores,
    neighbor_purity,
)
from lightly_grpo.losses.policy import GRPORMPolicyLoss
from lightly_grpo.methods import method_spec
from lightly_grpo.output_sets.kmeans_prototypes import KMeansPrototypes
from lightly_grpo.output_sets.neighbors import NeighborOutputSet
from lightly_grpo.output_sets.refresh import MineFromOutputSet, OutputSetRefresh, embed_bank
from lightly_grpo.pretrain.simclr import SimCLRModule
from lightly_grpo.rewards import build_reward, neighbor_reward
from lightly_grpo.stage import GRPORMStage

__all__ = [
    "UNLABELED_OUTPUT_SETS",
    "UnlabeledData",
    "build_unlabeled_stage",
    "continued_simclr",
    "posttrain_unlabeled",
    "unlabeled_data",
]

UNLABELED_OUTPUT_SETS = ("neighbors", "kmeans")
#: Baselines of the unlabeled mode.
UNLABELED_BASELINES = ("simclr",)
SIMCLR_BASELINE = "continued SimCLR"


@dataclass
class UnlabeledData:
    """The unlabeled training images: two-view training items and their one-view bank.

    Attributes:
        train: ``(views, label, index)`` items with SimCLR views (labels are never trained on).
        bank: The same images through the eval transform, in the same order (index i = item i).
        indices: Which train-split images these are.
    """

    train: Dataset[Any]
    bank: Dataset[Any]
    indices: list[int]


def unlabeled_data(cfg: PosttrainConfig) -> UnlabeledData:
    """``cfg.unlabeled_images`` train-split images (all by default), picked by ``data_seed``;
    only images of ``cfg.train_classes`` when it is set (retrieval mode)."""
    data = cfg.data
    split = resolve_dataset(data.dataset, "train", None, root=data.data_root, seed=data.data_seed)
    pool = np.arange(len(split))
    if cfg.train_classes is not None:
        pool = pool[np.isin(dataset_labels(split), cfg.train_classes)]
    chosen = random_subset(len(pool), cfg.unlabeled_images, data.data_seed)
    indices = pool[chosen].tolist()
    transform = simclr_transform(data.input_size, data.in_channels)
    views = resolve_dataset(
        data.dataset, "train", transform, root=data.data_root, seed=data.data_seed
    )
    return UnlabeledData(
        train=IndexedDataset(Subset(views, indices)),
        bank=Subset(eval_split(data, "train"), indices),
        indices=indices,
    )


def build_unlabeled_stage(
    cfg: PosttrainConfig, backbone: nn.Module, num_items: int, num_classes: int
) -> GRPORMStage:
    """The stage of an unlabeled output set (``cfg.output_set``), untrained and uninitialised."""
    shape = (cfg.data.in_channels, cfg.data.input_size, cfg.data.input_size)
    dim = backbone_output_dim(backbone, shape)
    if cfg.output_set == "neighbors":
        output_set: Any = NeighborOutputSet(
            num_items,
            dim,
            num_neighbors=cfg.num_neighbors,
            use_labels=cfg.train_classes is not None,
            # Without a neighbour reward the neighbours are ordinary wrong outputs.
            neighbors_positive=cfg.neighbor_reward > 0,
        )
        reward = neighbor_reward(cfg.accuracy_reward, cfg.neighbor_reward, uniformity_weight(cfg))
    elif cfg.output_set == "kmeans":
        output_set = KMeansPrototypes(cfg.num_clusters or num_classes, dim, seed=cfg.data.seed)
        reward = build_reward(cfg.accuracy_reward, uniformity_weight(cfg), cfg.uniformity_form)
    else:
        raise ValueError(
            f"unknown unlabeled output set {cfg.output_set!r}; choose from {UNLABELED_OUTPUT_SETS}"
        )
    criterion = GRPORMPolicyLoss(
        output_set,
        temperature=cfg.temperature,
        reward=reward,
        clip_eps=cfg.clip_eps,
        beta=cfg.beta,
        group_size=cfg.group_size,
    )
    return stage_from_config(cfg, backbone, criterion)


def _mines_neighbors(cfg: PosttrainConfig) -> bool:
    """Whether the training batches are neighbour-mined (:class:`NeighborBatchSampler`)."""
    return cfg.output_set == "neighbors" and cfg.train_classes is None


def _train_loader(cfg: PosttrainConfig, data: UnlabeledData, stage: GRPORMStage) -> DataLoader[Any]:
    output_set = stage.criterion.output_set
    if _mines_neighbors(cfg) and isinstance(output_set, NeighborOutputSet):
        # Half of every batch is one reference neighbour of the other half: a random batch of
        # 256 out of 60,000 images holds almost no neighbours to reward. Under DDP the sampler
        # reads its rank when iterated (Lightning starts the process group inside fit) and each
        # rank takes every W-th batch: a global batch is W mined batches.
        batch_size = min(cfg.batch_size, len(data.indices))
        sampler = NeighborBatchSampler(
            output_set.neighbors.cpu(), batch_size, seed=cfg.data.seed, drop_last=True
        )
        return DataLoader(data.train, batch_sampler=sampler, num_workers=cfg.data.num_workers)
    return _shuffled_loader(cfg, data)


def continued_simclr(cfg: PosttrainConfig) -> SimCLRModule:
    """The checkpoint's SimCLR model (backbone and projection head) to continue training."""
    module = SimCLRModule.load_from_checkpoint(
        cfg.checkpoint,
        map_location="cpu",
        weights_only=True,
        backbone=_load_backbone(cfg),
        lr=cfg.lr_backbone,
        # Under DDP its negatives are the global batch, as GRPO-RM's groups are.
        gather_distributed=True,
    )
    return module


def posttrain_unlabeled(cfg: PosttrainConfig, evaluate: bool = True) -> RunOutputs:
    """Trains GRPO-RM with an unlabeled output set (and the requested baselines), evaluates every
    model and writes the report.

    Besides the kNN and retrieval metrics of the labeled chain, every model gets the clustering
    scores of spherical k-means on its test embeddings (``cluster_acc`` with Hungarian matching,
    ``nmi``, ``ari``; the pretrained row is the "k-means on pretrained embeddings" baseline) and
    the neighbour purity of the test set; the k-means output set's own argmax is scored as
    ``policy_cluster_acc`` / ``policy_nmi`` / ``policy_ari``. Writes ``grpo.ckpt``,
    ``backbone.pt``, ``config.json``, ``metrics.json`` and ``report.html`` to ``out_dir``.
    """
    _check_unlabeled_config(cfg)
    check_not_posttrained(cfg.checkpoint)
    out_dir = prepare_run(cfg.out_dir, cfg.data.seed)
    data = unlabeled_data(cfg)
    backbone = _load_backbone(cfg)
    reference = copy.deepcopy(backbone)
    num_classes = len(np.unique(dataset_labels(eval_split(cfg.data, "test"))))
    # Resolved before training: a broken evaluation image is reported (and skipped) now, not
    # after hours of training.
    eval_data = _evaluation_data(cfg) if evaluate else None
    stage = build_unlabeled_stage(cfg, backbone, len(data.indices), num_classes)
    history = EpochHistory()
    callbacks = [history, *_refresh(cfg, data)]
    if _mines_neighbors(cfg):
        callbacks.append(MineFromOutputSet())
    trainer = make_trainer(
        cfg.trainer,
        out_dir,
        cfg.epochs,
        callbacks,
        use_distributed_sampler=not _mines_neighbors(cfg),
    )
    stage.to(trainer.strategy.root_device)
    started = time.perf_counter()
    # Before fit there is no process group yet, so every DDP rank embeds the whole bank once;
    # when Lightning wraps the module, DDP broadcasts rank 0's output set to the others (the
    # refreshes during training are split across ranks).
    bank = embed_bank(
        stage, data.bank, cfg.eval.batch_size, cfg.data.num_workers, cfg.trainer.progress
    )
    stage.criterion.output_set.initialize(bank)
    stage.criterion.output_set.snapshot_reference()
    init_seconds = time.perf_counter() - started
    stage.train()
    trainer.fit(stage, _train_loader(cfg, data, stage), ckpt_path=resume_from(cfg.resume, out_dir))
    train_seconds = time.perf_counter() - started
    stage.to(trainer.strategy.root_device)
    if cfg.batchnorm == "recompute":
        stage.recompute_batchnorm(unlabeled_loader(cfg))
    stage.eval()
    outputs = RunOutputs(
        checkpoint=save_final_checkpoint(trainer, out_dir / "grpo.ckpt"),  # collective under DDP
        backbone=out_dir / "backbone.pt",
        history=history.rows,
    )
    if is_global_zero():  # under DDP every rank holds the same weights; rank 0 writes
        export_backbone(stage.backbone, out_dir / "backbone.pt")
    models: dict[str, nn.Module] = {PRETRAINED_NAME: reference}
    for name in _baselines(cfg):
        if name == "simclr":
            # As many batches as GRPO-RM saw (global_step counts its inner steps too).
            batches = trainer.global_step // stage.inner_steps
            models[SIMCLR_BASELINE] = _fit_simclr(cfg, data, out_dir, batches)
        else:  # a labeled method of lightly_grpo.methods, retrieval mode only
            labeled = _retrieval_labeled_data(cfg, data)
            models[name] = fit_baseline(name, cfg, reference, labeled, out_dir).backbone
    models["GRPO-RM"] = stage.backbone  # last: the report's delta is last minus first
    config = asdict(cfg)
    config[RUN_FACTS_KEY] = {
        "unlabeled_images": len(data.indices),
        "steps": trainer.global_step,
        "train_seconds": round(train_seconds, 1),
        "output_set_init_seconds": round(init_seconds, 1),
    }
    if is_global_zero():
        (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    if evaluate:
        output_set = stage.criterion.output_set
        clusters = output_set if isinstance(output_set, KMeansPrototypes) else None
        assert eval_data is not None
        evaluations = _evaluate(cfg, models, eval_data, trainer.strategy.root_device, clusters)
        if evaluations is None:
            return outputs  # a DDP rank other than 0: it embedded its shards; rank 0 reports
        title = (
            f"GRPO-RM unlabeled post-training report ({cfg.output_set})"
            if cfg.train_classes is None
            else f"GRPO-RM retrieval on unseen classes (trained on classes {cfg.train_classes})"
        )
        outputs.report = report_models(
            evaluations,
            eval_data,
            out_dir,
            title,
            outputs.history,
            config,
            cfg.eval.grid_queries,
        )
        outputs.results = {name: e.result for name, e in evaluations.items()}
    return outputs


def _check_unlabeled_config(cfg: PosttrainConfig) -> None:
    """Fails before any training on settings the unlabeled chain cannot run."""
    if cfg.output_set not in UNLABELED_OUTPUT_SETS:
        raise ValueError(
            f"unknown unlabeled output set {cfg.output_set!r}; choose from {UNLABELED_OUTPUT_SETS}"
        )
    retrieval = cfg.train_classes is not None
    if retrieval and cfg.output_set != "neighbors":
        raise ValueError(
            f"train_classes (retrieval mode) needs --output-set neighbors, got {cfg.output_set!r}"
        )
    if retrieval and len(set(cfg.train_classes or [])) < 2:
        raise ValueError(f"train_classes needs at least 2 classes, got {cfg.train_classes}")
    for name in _baselines(cfg):
        if name == "simclr":
            _check_simclr_checkpoint(cfg.checkpoint)
            continue
        if not retrieval:
            raise ValueError(
                f"unknown unlabeled baseline {name!r}: without labels the baselines are "
                f"{list(UNLABELED_BASELINES)} (labeled methods need --train-classes)"
            )
        method_spec(name)  # raises for an unknown method name


def _shuffled_loader(cfg: PosttrainConfig, data: UnlabeledData) -> DataLoader[Any]:
    """Shuffled two-view batches (seeded by the training seed), the same for every method."""
    check_training_data(data.train, 1, drop_last=True, name="unlabeled training set")
    return make_loader(
        data.train,
        min(cfg.batch_size, len(data.indices)),
        shuffle=True,
        drop_last=True,
        num_workers=cfg.data.num_workers,
        seed=cfg.data.seed,
    )


def _baselines(cfg: PosttrainConfig) -> list[str]:
    return [name for name in cfg.baselines if name.lower() != "none"]


def _check_simclr_checkpoint(path: str) -> None:
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


def _load_backbone(cfg: PosttrainConfig) -> nn.Module:
    return load_backbone(
        cfg.checkpoint,
        cfg.architecture,
        in_channels=cfg.data.in_channels,
        prefix=CHECKPOINT_BACKBONES[cfg.backbone_from],
        trusted=cfg.trust_checkpoint,
    )


def _retrieval_labeled_data(cfg: PosttrainConfig, data: UnlabeledData) -> LabeledData:
    """The retrieval-mode images as a labeled method sees them: the same two-view batches in the
    same shuffled order as GRPO-RM's, and the bank for the criterion's initialisation."""
    labels = dataset_labels(data.bank)
    loader = _shuffled_loader(cfg, data)
    init = make_loader(data.bank, cfg.eval.batch_size, shuffle=False)
    return LabeledData(loader, init, len(data.indices), int(labels.max()) + 1)


def _evaluation_data(cfg: PosttrainConfig) -> EvaluationData:
    """The evaluation splits; in retrieval mode only the classes that were not trained on."""
    data = evaluation_data(cfg.data, cfg.eval)
    if cfg.train_classes is None:
        return data
    keep_train = ~np.isin(dataset_labels(data.train), cfg.train_classes)
    keep_test = ~np.isin(dataset_labels(data.test), cfg.train_classes)
    return dataclasses.replace(
        data,
        train=Subset(data.train, np.flatnonzero(keep_train).tolist()),
        test=Subset(data.test, np.flatnonzero(keep_test).tolist()),
        test_indices=data.test_indices[keep_test],
    )


def _refresh(cfg: PosttrainConfig, data: UnlabeledData) -> list[pl.Callback]:
    if cfg.refresh_every <= 0:
        return []
    return [
        OutputSetRefresh(
            data.bank,
            cfg.refresh_every,
            cfg.eval.batch_size,
            cfg.data.num_workers,
            progress=cfg.trainer.progress,
        )
    ]


def _fit_simclr(cfg: PosttrainConfig, data: UnlabeledData, out_dir: Path, steps: int) -> nn.Module:
    """Continues SimCLR for ``steps`` steps on the same images and views; returns its backbone."""
    pl.seed_everything(cfg.data.seed, workers=True)
    module = continued_simclr(cfg)
    loader = _shuffled_loader(cfg, data)
    # As many steps of the same batch size as GRPO-RM took (a neighbour-mined epoch holds more
    # batches than a plain one), however many epochs that is.
    folder = out_dir / "baselines" / "simclr"
    trainer = make_trainer(cfg.trainer, folder, -1)
    trainer.fit_loop.epoch_loop.max_steps = steps
    trainer.fit(module, loader, ckpt_path=resume_from(cfg.resume, folder))
    return module.backbone


@torch.no_grad()
def _evaluate(
    cfg: PosttrainConfig,
    models: dict[str, nn.Module],
    data: EvaluationData,
    device: torch.device,
    clusters: KMeansPrototypes | None,
) -> dict[str, EmbeddingEvaluation] | None:
    """Every model's evaluation with the clustering scores; None on a DDP rank other than 0
    (every rank embeds its shard of the splits, rank 0 scores)."""
    evaluations = {}
    for name, backbone in models.items():
        backbone.to(device)
        with eval_mode(backbone):
            evaluation = evaluate_embeddings(
                name, backbone_embed_fn(backbone), data, cfg.eval, device
            )
        if evaluation is None:
            continue  # not rank 0; the next model's embedding still needs this rank's shard
        queries, labels = evaluation.embeddings, evaluation.labels
        metrics = evaluation.result.metrics
        metrics.update(
            # As many clusters as classes present (fewer in retrieval mode's unseen classes).
            kmeans_clustering_scores(queries, labels, None, seed=cfg.data.data_seed)
        )
        metrics["neighbor_purity"] = neighbor_purity(queries, labels, k=min(20, len(labels) - 1))
        if clusters is not None and name == "GRPO-RM":
            policy = clusters.predict(queries.to(clusters.centroids.device)).cpu()
            scores = clustering_scores(policy, labels)
            metrics.update({f"policy_{key}": value for key, value in scores.items()})
        evaluations[name] = evaluation
    return evaluations if len(evaluations) == len(models) else None
