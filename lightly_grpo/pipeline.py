"""The chain a user runs: SimCLR pretraining -> GRPO-RM post-training -> evaluation -> report.

Each step is a function over a small config dataclass, so the CLI, the recipes and the tests
share one implementation; every size (epochs, batch, image count, label fraction) is a field.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from lightly_grpo.backbones import (
    backbone_output_dim,
    build_backbone,
    export_backbone,
    load_backbone,
)
from lightly_grpo.data import (
    GRAYSCALE_NORMALIZE,
    ToChannels,
    eval_transform,
    images_for_display,
    labeled_subset,
    make_loader,
    random_subset,
    resolve_dataset,
    simclr_transform,
)
from lightly_grpo.evaluation import RetrievalEvaluator
from lightly_grpo.report import write_report
from lightly_grpo.rewards import build_reward
from lightly_grpo.simclr import SimCLRModule
from lightly_grpo.stage import GRPORMStage

logger = logging.getLogger(__name__)

EmbedFn = Callable[[Tensor], Tensor]


@dataclass
class DataConfig:
    """Which images, at what size."""

    dataset: str = "default"  # "default", "fashion-mnist", "digits" or an ImageFolder directory
    data_root: str | None = None
    input_size: int = 32
    in_channels: int = 1
    num_workers: int = 0
    seed: int = 0


@dataclass
class TrainerConfig:
    """Lightning Trainer settings shared by the training steps."""

    accelerator: str = "auto"
    devices: int = 1
    precision: str = "32-true"
    progress: bool = True


@dataclass
class PretrainConfig:
    """SimCLR pretraining (lightly's transform, projection head and NT-Xent loss)."""

    out_dir: str = "runs/simclr"
    architecture: str = "resnet18_small"
    epochs: int = 10
    batch_size: int = 256
    max_images: int | None = None  # None = the whole train split
    lr: float = 1e-3
    temperature: float = 0.2
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


@dataclass
class EvalConfig:
    """What the evaluation embeds: the kNN bank (train split) and the queries (test split)."""

    max_train_images: int | None = None  # None = all
    max_test_images: int | None = None
    batch_size: int = 512
    grid_queries: int = 8


@dataclass
class PosttrainConfig:
    """GRPO-RM post-training on a labeled share of the train split."""

    checkpoint: str = "runs/simclr/simclr.ckpt"
    out_dir: str = "runs/grpo"
    architecture: str = "resnet18_small"
    label_fraction: float = 0.1
    epochs: int = 20
    batch_size: int = 256
    augment: str = "light"  # "none", "light" (crop + flip) or "simclr" (two SimCLR views)
    temperature: float = 0.1
    accuracy_reward: float = 1.0
    uniformity_reward: float = 1.0
    uniformity_form: str = "policy"
    clip_eps: float = 0.2
    beta: float = 0.0
    inner_steps: int = 1
    group_size: int | None = None
    lr_backbone: float = 1e-4
    lr_prototypes: float = 1e-3
    weight_decay: float = 1e-2
    batchnorm: str = "freeze"
    compile_loss: bool = False
    val_images: int | None = 2000  # test images for the per-epoch policy accuracy; 0 disables
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# --------------------------------------------------------------------------- helpers
def _trainer(cfg: TrainerConfig, out_dir: Path, epochs: int, callbacks: list[Any]) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        precision=cfg.precision,  # type: ignore[arg-type]
        default_root_dir=str(out_dir),
        logger=CSVLogger(str(out_dir), name="logs"),
        callbacks=callbacks,
        enable_progress_bar=cfg.progress,
        enable_model_summary=False,
        log_every_n_steps=5,
        num_sanity_val_steps=0,
    )


def _subset(dataset: Dataset[Any], size: int | None, seed: int) -> Dataset[Any]:
    total = len(dataset)  # type: ignore[arg-type]
    if size is None or size >= total:
        return dataset
    return Subset(dataset, random_subset(total, size, seed).tolist())


def _eval_split(data: DataConfig, split: str) -> Any:
    """A split of the configured dataset through the deterministic eval transform."""
    transform = eval_transform(data.input_size, data.in_channels)
    return resolve_dataset(data.dataset, split, transform, root=data.data_root)


def _dataset_labels(dataset: Any) -> np.ndarray:
    if hasattr(dataset, "labels"):
        return np.asarray(dataset.labels)
    return np.asarray(dataset.targets)


def posttrain_transform(kind: str, input_size: int, in_channels: int) -> Callable[[Any], Any]:
    """Transform for the labeled post-training images."""
    if kind == "none":
        return eval_transform(input_size, in_channels)
    if kind == "simclr":
        return simclr_transform(input_size, in_channels)
    if kind != "light":
        raise ValueError(f"augment must be 'none', 'light' or 'simclr', got {kind!r}")
    stats = {k: v * in_channels for k, v in GRAYSCALE_NORMALIZE.items()}
    return T.Compose(
        [
            ToChannels(in_channels),
            T.RandomResizedCrop(input_size, scale=(0.6, 1.0), antialias=True),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(**stats),
        ]
    )


def _device(accelerator: str) -> torch.device:
    """The torch device of a Lightning accelerator name or a device string ("auto", "gpu",
    "cpu", "cuda:1", ...)."""
    if accelerator == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cuda" if accelerator == "gpu" else accelerator)


# --------------------------------------------------------------------------- pretraining
def pretrain(cfg: PretrainConfig) -> Path:
    """Pretrains a backbone with SimCLR and writes ``simclr.ckpt`` and ``backbone.pt``.

    Returns:
        The path of the Lightning checkpoint (backbone under the ``backbone.`` prefix).
    """
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.data.seed, workers=True)
    transform = simclr_transform(cfg.data.input_size, cfg.data.in_channels)
    dataset = resolve_dataset(cfg.data.dataset, "train", transform, root=cfg.data.data_root)
    dataset = _subset(dataset, cfg.max_images, cfg.data.seed)
    batch_size = min(cfg.batch_size, len(dataset))  # type: ignore[arg-type]
    loader = make_loader(
        dataset, batch_size, shuffle=True, drop_last=True, num_workers=cfg.data.num_workers
    )
    backbone = build_backbone(cfg.architecture, cfg.data.in_channels)
    feature_dim = backbone_output_dim(
        backbone, (cfg.data.in_channels, cfg.data.input_size, cfg.data.input_size)
    )
    model = SimCLRModule(backbone, feature_dim=feature_dim, lr=cfg.lr, temperature=cfg.temperature)
    checkpoints = ModelCheckpoint(dirpath=out_dir / "checkpoints", save_last=True)
    trainer = _trainer(cfg.trainer, out_dir, cfg.epochs, [checkpoints])
    trainer.fit(model, loader)
    path = out_dir / "simclr.ckpt"
    trainer.save_checkpoint(path)
    export_backbone(model.backbone, out_dir / "backbone.pt")
    (out_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    return path


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def embed_dataset(
    embed: EmbedFn, dataset: Dataset[Any], batch_size: int, device: torch.device, desc: str
) -> tuple[Tensor, Tensor]:
    """Embeds a labeled dataset (eval transform) into L2-normalised CPU embeddings."""
    loader = make_loader(dataset, batch_size, shuffle=False)
    chunks, labels = [], []
    for images, targets in tqdm(loader, desc=desc, leave=False):
        chunks.append(F.normalize(embed(images.to(device)).float(), dim=1).cpu())
        labels.append(torch.as_tensor(targets))
    return torch.cat(chunks), torch.cat(labels).long()


def backbone_embed_fn(backbone: nn.Module) -> EmbedFn:
    """Embedding function of a plain backbone (eval mode, flattened features)."""
    backbone.eval()
    return lambda images: backbone(images).flatten(start_dim=1)


def class_means_accuracy(
    train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], num_classes: int
) -> float:
    """Accuracy of the nearest-class-mean policy (the prototypes GRPO-RM starts from)."""
    embeddings, labels = train
    sums = torch.zeros(num_classes, embeddings.shape[1]).index_add_(0, labels, embeddings)
    keys = F.normalize(sums, dim=1)
    return float(((test[0] @ keys.t()).argmax(1) == test[1]).float().mean())


@dataclass
class EvaluationData:
    """The train (kNN bank) and test splits that every model is evaluated on."""

    train: Dataset[Any]
    test: Dataset[Any]
    class_names: list[str]
    display_test: Dataset[Any]  # the test split without transform, for the retrieval grid
    test_indices: np.ndarray


def evaluation_data(data: DataConfig, cfg: EvalConfig) -> EvaluationData:
    """Loads the train/test splits with the eval transform, subsampled as configured."""
    train = _eval_split(data, "train")
    test = _eval_split(data, "test")
    display = resolve_dataset(data.dataset, "test", None, root=data.data_root)
    test_indices = np.arange(len(test))
    if cfg.max_test_images is not None and cfg.max_test_images < len(test):
        test_indices = random_subset(len(test), cfg.max_test_images, data.seed + 1)
    return EvaluationData(
        train=_subset(train, cfg.max_train_images, data.seed + 2),
        test=Subset(test, test_indices.tolist()),
        class_names=list(getattr(train, "classes", [])),
        display_test=display,
        test_indices=test_indices,
    )


def evaluate_embeddings(
    name: str,
    embed: EmbedFn,
    data: EvaluationData,
    cfg: EvalConfig,
    device: torch.device,
    policy: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Any]:
    """kNN (test against train), retrieval (leave-one-out within test) and policy accuracy."""
    train = embed_dataset(embed, data.train, cfg.batch_size, device, f"{name}: train split")
    test = embed_dataset(embed, data.test, cfg.batch_size, device, f"{name}: test split")
    # kNN: test queries against the train bank; retrieval metrics: leave-one-out within test.
    knn = RetrievalEvaluator(retrieval=False, nmi=False, progress=True).evaluate(
        test[0], test[1], train[0], train[1]
    )
    retrieval = RetrievalEvaluator(knn_protocols=(), progress=True).evaluate(test[0], test[1])
    metrics = {k: v for k, v in knn.metrics.items() if k.startswith("knn_")}
    metrics.update({k: v for k, v in retrieval.metrics.items() if not k.startswith("knn_")})
    num_classes = int(max(int(train[1].max()), int(test[1].max())) + 1)
    if policy is not None:
        predictions = policy(test[0])
        metrics["policy_accuracy"] = float((predictions == test[1]).float().mean())
    else:
        metrics["policy_accuracy"] = class_means_accuracy(train, test, num_classes)
    per_class = dict(retrieval.per_class)
    for key, values in knn.per_class.items():
        if key.startswith("knn"):
            per_class[key] = values
    return {
        "metrics": metrics,
        "per_class": per_class,
        "test_embeddings": test[0],
        "test_labels": test[1],
        "neighbors": retrieval.neighbors,
    }


def retrieval_examples(
    result: dict[str, Any], data: EvaluationData, num_queries: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Query images with their top-8 leave-one-out results, for the report's grid."""
    rng = np.random.default_rng(seed)
    count = min(num_queries, len(data.test_indices))
    queries = np.sort(rng.choice(len(data.test_indices), size=count, replace=False))
    neighbors = np.asarray(result["neighbors"])[queries, :8]
    labels = result["test_labels"].numpy()
    to_display = data.test_indices
    query_images = images_for_display(data.display_test, to_display[queries])
    result_images = np.stack(
        [images_for_display(data.display_test, to_display[row]) for row in neighbors]
    )
    return {
        "query_images": query_images,
        "query_labels": labels[queries],
        "result_images": result_images,
        "result_labels": labels[neighbors],
    }


def report_models(
    results: dict[str, dict[str, Any]],
    data: EvaluationData,
    out_dir: Path,
    title: str,
    history: list[dict[str, float]] | None,
    config: dict[str, Any],
    grid_queries: int,
) -> Path:
    """Writes metrics.json and report.html/.md for one or more evaluated models."""
    return write_report(
        out_dir,
        title=title,
        metrics={name: r["metrics"] for name, r in results.items()},
        per_class={name: r["per_class"] for name, r in results.items()},
        history=history,
        embeddings={
            name: (r["test_embeddings"].numpy(), r["test_labels"].numpy())
            for name, r in results.items()
        },
        retrieval={name: retrieval_examples(r, data, grid_queries) for name, r in results.items()},
        class_names=data.class_names or None,
        config=config,
    )


# --------------------------------------------------------------------------- post-training
def history_rows(metrics_csv: Path) -> list[dict[str, float]]:
    """Per-epoch rows from Lightning's CSVLogger file: ``train/*_epoch`` and ``val/*`` columns.

    The CSV is read rather than a callback's ``callback_metrics`` because epoch aggregates land
    there only after ``on_train_epoch_end`` has run, one epoch late.
    """
    rows: dict[int, dict[str, float]] = {}
    with open(metrics_csv, newline="") as handle:
        for record in csv.DictReader(handle):
            epoch = int(record["epoch"])
            row = rows.setdefault(epoch, {"epoch": float(epoch + 1)})
            for name, value in record.items():
                if not value or "/" not in name or name.endswith("_step"):
                    continue
                row[name.removesuffix("_epoch")] = float(value)
    return [rows[epoch] for epoch in sorted(rows)]


def build_stage(cfg: PosttrainConfig, backbone: nn.Module, num_classes: int) -> GRPORMStage:
    """The GRPORMStage for a config (embedding size measured on a dummy image)."""
    shape = (cfg.data.in_channels, cfg.data.input_size, cfg.data.input_size)
    return GRPORMStage(
        backbone,
        num_classes=num_classes,
        embedding_size=backbone_output_dim(backbone, shape),
        temperature=cfg.temperature,
        reward=build_reward(cfg.accuracy_reward, cfg.uniformity_reward, cfg.uniformity_form),
        clip_eps=cfg.clip_eps,
        beta=cfg.beta,
        inner_steps=cfg.inner_steps,
        group_size=cfg.group_size,
        lr_backbone=cfg.lr_backbone,
        lr_prototypes=cfg.lr_prototypes,
        weight_decay=cfg.weight_decay,
        batchnorm=cfg.batchnorm,
        compile_loss=cfg.compile_loss,
    )


def posttrain(cfg: PosttrainConfig, evaluate: bool = True) -> dict[str, Any]:
    """Loads a pretrained backbone, post-trains it with GRPO-RM, evaluates both, writes a report.

    Returns:
        A dict with the paths written and, when ``evaluate``, the metrics of both models.
    """
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.data.seed, workers=True)
    device = _device(cfg.trainer.accelerator)
    data = cfg.data
    plain = resolve_dataset(data.dataset, "train", None, root=data.data_root)
    labels = _dataset_labels(plain)
    num_classes = int(labels.max()) + 1
    indices = labeled_subset(labels, cfg.label_fraction, seed=data.seed)
    train_tf = posttrain_transform(cfg.augment, data.input_size, data.in_channels)
    train_set = Subset(
        resolve_dataset(data.dataset, "train", train_tf, root=data.data_root), indices.tolist()
    )
    init_set = Subset(_eval_split(data, "train"), indices.tolist())
    batch_size = min(cfg.batch_size, len(indices))
    train_loader = make_loader(
        train_set, batch_size, shuffle=True, drop_last=True, num_workers=data.num_workers
    )
    backbone = load_backbone(cfg.checkpoint, cfg.architecture, in_channels=data.in_channels)
    reference = copy.deepcopy(backbone)  # the pretrained backbone, evaluated beside the result
    stage = build_stage(cfg, backbone, num_classes).to(device)
    stage.init_prototypes(make_loader(init_set, cfg.eval.batch_size, shuffle=False))
    # Per-epoch policy accuracy on (a subset of) the test split: the curve next to train accuracy.
    val_loader = make_loader(
        _subset(_eval_split(data, "test"), cfg.val_images, data.seed + 4),
        cfg.eval.batch_size,
        shuffle=False,
    )
    checkpoints = ModelCheckpoint(dirpath=out_dir / "checkpoints", save_last=True)
    trainer = _trainer(cfg.trainer, out_dir, cfg.epochs, [checkpoints])
    started = time.perf_counter()
    trainer.fit(stage, train_loader, val_loader if cfg.val_images != 0 else None)
    train_seconds = time.perf_counter() - started
    stage = stage.to(device)
    if cfg.batchnorm == "recompute":
        unlabeled = _subset(_eval_split(data, "train"), 50 * cfg.eval.batch_size, data.seed + 3)
        stage.recompute_batchnorm(make_loader(unlabeled, cfg.eval.batch_size, shuffle=False))
    stage.eval()
    trainer.save_checkpoint(out_dir / "grpo.ckpt")
    export_backbone(stage.backbone, out_dir / "backbone.pt")
    assert trainer.logger is not None and trainer.logger.log_dir is not None
    rows = history_rows(Path(trainer.logger.log_dir) / "metrics.csv")
    config = asdict(cfg)
    config.update(labeled_images=len(indices), train_seconds=round(train_seconds, 1))
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    outputs: dict[str, Any] = {
        "checkpoint": str(out_dir / "grpo.ckpt"),
        "backbone": str(out_dir / "backbone.pt"),
        "history": rows,
    }
    if not evaluate:
        return outputs
    eval_data = evaluation_data(data, cfg.eval)
    reference = reference.to(device)
    results = {
        "SimCLR backbone": evaluate_embeddings(
            "SimCLR backbone", backbone_embed_fn(reference), eval_data, cfg.eval, device
        ),
        "GRPO-RM": evaluate_embeddings(
            "GRPO-RM",
            stage.forward,
            eval_data,
            cfg.eval,
            device,
            policy=lambda z: stage.criterion.prototypes.predict(z.to(stage.device)).cpu(),
        ),
    }
    report = report_models(
        results,
        eval_data,
        out_dir,
        "GRPO-RM post-training report",
        rows,
        config,
        cfg.eval.grid_queries,
    )
    outputs["report"] = str(report)
    outputs["metrics"] = {name: r["metrics"] for name, r in results.items()}
    return outputs


def evaluate_checkpoints(
    checkpoints: list[str],
    out_dir: str,
    architecture: str = "resnet18_small",
    data: DataConfig | None = None,
    cfg: EvalConfig | None = None,
    names: list[str] | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Evaluates one or more checkpoints (ours, a lightly recipe's, or a plain state dict)."""
    data = data or DataConfig()
    cfg = cfg or EvalConfig()
    if not checkpoints:
        raise ValueError("evaluate needs at least one checkpoint, got none")
    names = names or [Path(c).stem for c in checkpoints]
    if len(names) != len(checkpoints):
        raise ValueError(f"got {len(names)} names for {len(checkpoints)} checkpoints")
    if len(set(names)) != len(names):
        names = [f"{i + 1}: {n}" for i, n in enumerate(names)]
    target = _device(device)

    eval_data = evaluation_data(data, cfg)
    results = {}
    for name, checkpoint in zip(names, checkpoints, strict=True):
        backbone = load_backbone(checkpoint, architecture, in_channels=data.in_channels).to(target)
        results[name] = evaluate_embeddings(
            name, backbone_embed_fn(backbone), eval_data, cfg, target
        )
    out = Path(out_dir)
    report = report_models(
        results,
        eval_data,
        out,
        "Embedding evaluation report",
        None,
        {"checkpoints": checkpoints, "data": asdict(data), "eval": asdict(cfg)},
        cfg.grid_queries,
    )
    return {"report": str(report), "metrics": {n: r["metrics"] for n, r in results.items()}}
