"""The evaluation chain: embed the train (kNN bank) and test splits, score, write the report.

Every model is scored with :func:`lightly_grpo.evaluation.evaluate_against_bank` (kNN of the test
split against the train bank, retrieval leave-one-out within the test split) plus the accuracy
of the nearest class mean of the train split (``ncm_accuracy``, any model) and of the model's own
classifier where it has one (``classifier_accuracy``: GRPO-RM's prototype policy, a linear head).
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from lightly_grpo.backbones import load_backbone
from lightly_grpo.chains.config import DataConfig, EvalConfig, EvaluateConfig
from lightly_grpo.chains.runtime import resolve_device
from lightly_grpo.data import (
    eval_transform,
    images_for_display,
    random_subset,
    resolve_dataset,
    subset,
)
from lightly_grpo.distributed import is_global_zero
from lightly_grpo.embedding import (
    EmbedFn,
    backbone_features,
    class_means,
    embed_dataset,
    eval_mode,
)
from lightly_grpo.evaluation import RetrievalEvaluator, RetrievalResult, evaluate_against_bank
from lightly_grpo.evaluation.knn import parse_protocol
from lightly_grpo.report import write_report

#: Maps unnormalised (N, D) CPU embeddings to (N,) predicted classes: a model's own head.
ClassifierFn = Callable[[Tensor], Tensor]


def eval_split(data: DataConfig, split: str) -> Any:
    """A split of the configured dataset through the deterministic eval transform."""
    transform = eval_transform(data.input_size, data.in_channels)
    return resolve_dataset(data.dataset, split, transform, root=data.data_root, seed=data.data_seed)


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
    train = eval_split(data, "train")
    test = eval_split(data, "test")
    test_indices = np.arange(len(test))
    if cfg.max_test_images is not None and cfg.max_test_images < len(test):
        test_indices = random_subset(len(test), cfg.max_test_images, data.data_seed + 1)
    return EvaluationData(
        train=subset(train, cfg.max_train_images, data.data_seed + 2),
        test=Subset(test, test_indices.tolist()),
        class_names=list(getattr(train, "classes", [])),
        display_test=resolve_dataset(
            data.dataset, "test", None, root=data.data_root, seed=data.data_seed
        ),
        test_indices=test_indices,
    )


@dataclass
class EmbeddingEvaluation:
    """One model's evaluation: its metrics, and the test embeddings the report maps.

    Attributes:
        result: kNN, retrieval and accuracy metrics with per-class values and the
            test queries' leave-one-out neighbours.
        embeddings: (Q, D) L2-normalised test embeddings (CPU).
        labels: (Q,) test labels.
    """

    result: RetrievalResult
    embeddings: Tensor
    labels: Tensor


def backbone_embed_fn(backbone: nn.Module) -> EmbedFn:
    """Embedding function of a plain backbone (flattened features; call it in eval mode)."""
    return functools.partial(backbone_features, backbone, None)


def class_means_accuracy(
    train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], num_classes: int
) -> float:
    """Accuracy of the nearest-class-mean classifier of the (normalised) train embeddings.

    Examples:
        >>> train = (torch.eye(2), torch.tensor([0, 1]))
        >>> class_means_accuracy(train, (torch.tensor([[0.9, 0.1]]), torch.tensor([0])), 2)
        1.0
    """
    keys, _ = class_means(train[0], train[1], num_classes)
    return float(((test[0] @ keys.t()).argmax(1) == test[1]).float().mean())


def embed_split(
    name: str,
    embed: EmbedFn,
    dataset: Dataset[Any],
    cfg: EvalConfig,
    device: torch.device,
    progress: bool = True,
) -> tuple[Tensor, Tensor]:
    """Unnormalised (N, D) CPU embeddings and (N,) labels of a labeled dataset (eval mode is
    the caller's), with a progress bar named ``name``; under DDP each rank embeds a shard
    (:func:`~lightly_grpo.embedding.embed_dataset`)."""
    embeddings, labels = embed_dataset(
        embed, dataset, device, cfg.batch_size, progress=progress, desc=name, normalize=False
    )
    assert labels is not None  # labels are required
    return embeddings, labels


def _protocols_that_fit(evaluator: RetrievalEvaluator, bank_size: int) -> RetrievalEvaluator:
    """The evaluator without the kNN protocols whose k exceeds the bank, with a warning: a small
    ImageFolder (60 training images against lightly's k = 200) still gets every other metric
    after its training, instead of an error."""
    fitting = tuple(p for p in evaluator.knn_protocols if parse_protocol(p)[1] <= bank_size)
    if fitting == tuple(evaluator.knn_protocols):
        return evaluator
    dropped = [parse_protocol(p)[0] for p in evaluator.knn_protocols if p not in fitting]
    warnings.warn(
        f"kNN protocol(s) {dropped} need more than the {bank_size} bank images; not evaluated",
        stacklevel=3,
    )
    return evaluator.replace(knn_protocols=fitting)


def score_embeddings(
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    classifier: ClassifierFn | None = None,
    progress: bool = True,
    evaluator: RetrievalEvaluator | None = None,
) -> RetrievalResult:
    """Every metric of one model from its unnormalised train (bank) and test embeddings.

    kNN of the test split against the train bank and retrieval leave-one-out within the test
    split (:func:`~lightly_grpo.evaluation.evaluate_against_bank`, on L2-normalised
    embeddings), plus two accuracies named for what they are: ``ncm_accuracy``, the
    nearest-class-mean classifier of the train bank (any model has one), and, when
    ``classifier`` is given, ``classifier_accuracy``, the model's own head (GRPO-RM's prototype
    policy, a linear head, the nearest proxy) on the unnormalised test embeddings. ``evaluator``
    chooses the kNN protocols and retrieval metrics (default: ``RetrievalEvaluator()``).
    """
    bank = F.normalize(train[0], dim=1)
    queries = F.normalize(test[0], dim=1)
    evaluator = _protocols_that_fit(evaluator or RetrievalEvaluator(), len(bank))
    result = evaluate_against_bank(queries, test[1], bank, train[1], evaluator, progress)
    num_classes = int(max(int(train[1].max()), int(test[1].max())) + 1)
    result.metrics["ncm_accuracy"] = class_means_accuracy(
        (bank, train[1]), (queries, test[1]), num_classes
    )
    if classifier is not None:
        predicted = classifier(test[0]).cpu()
        result.metrics["classifier_accuracy"] = float((predicted == test[1]).float().mean())
    return result


def evaluate_embeddings(
    name: str,
    embed: EmbedFn,
    data: EvaluationData,
    cfg: EvalConfig,
    device: torch.device,
    classifier: ClassifierFn | None = None,
    evaluator: RetrievalEvaluator | None = None,
) -> EmbeddingEvaluation | None:
    """Embeds the train bank and the test split and scores them (:func:`score_embeddings`).

    Under DDP every rank takes part in the embedding (:func:`embed_split`); only rank 0
    scores, the others get None.

    Args:
        name: The model's name (progress bars).
        embed: Maps an image batch on ``device`` to (B, D) embeddings; call in eval mode.
        data: The splits.
        cfg: Batch size of the embedding.
        device: Where the images go.
        classifier: The model's own class prediction from unnormalised CPU embeddings (e.g.
            ``module.classify_embeddings``); None for a model without a head.
        evaluator: The metrics (default ``RetrievalEvaluator()``).
    """
    train = embed_split(f"{name}: train split", embed, data.train, cfg, device)
    test = embed_split(f"{name}: test split", embed, data.test, cfg, device)
    if not is_global_zero():
        return None  # under DDP every rank embeds its shard; rank 0 alone scores and reports
    result = score_embeddings(train, test, classifier, evaluator=evaluator)
    return EmbeddingEvaluation(
        result=result, embeddings=F.normalize(test[0], dim=1), labels=test[1]
    )


def retrieval_examples(
    evaluation: EmbeddingEvaluation, data: EvaluationData, num_queries: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Query images with their top-8 leave-one-out results, for the report's grid."""
    rng = np.random.default_rng(seed)
    count = min(num_queries, len(data.test_indices))
    queries = np.sort(rng.choice(len(data.test_indices), size=count, replace=False))
    neighbors = evaluation.result.neighbors.numpy()[queries, :8]
    labels = evaluation.labels.numpy()
    shown = data.test_indices
    return {
        "query_images": images_for_display(data.display_test, shown[queries]),
        "query_labels": labels[queries],
        "result_images": np.stack(
            [images_for_display(data.display_test, shown[row]) for row in neighbors]
        ),
        "result_labels": labels[neighbors],
    }


def report_models(
    evaluations: Mapping[str, EmbeddingEvaluation],
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
        metrics={name: e.result.metrics for name, e in evaluations.items()},
        per_class={name: e.result.per_class for name, e in evaluations.items()},
        history=history,
        embeddings={
            name: (e.embeddings.numpy(), e.labels.numpy()) for name, e in evaluations.items()
        },
        retrieval={
            name: retrieval_examples(e, data, grid_queries) for name, e in evaluations.items()
        },
        class_names=data.class_names or None,
        config=config,
    )


@dataclass
class RunOutputs:
    """What a chain wrote and measured.

    Attributes:
        results: Model name -> its metrics (empty when the run did not evaluate).
        report: ``report.html``, when written.
        checkpoint: The Lightning checkpoint of a training run.
        backbone: The exported backbone of a training run (``load_backbone`` reads it).
        history: Per-epoch logged metrics of a training run (see ``EpochHistory``).
    """

    results: dict[str, RetrievalResult] = field(default_factory=dict)
    report: Path | None = None
    checkpoint: Path | None = None
    backbone: Path | None = None
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        """Model name -> metric name -> value."""
        return {name: dict(result.metrics) for name, result in self.results.items()}


def evaluate_run(cfg: EvaluateConfig) -> RunOutputs:
    """Evaluates checkpoints (ours, a lightly recipe's, or a plain state dict) side by side.

    Examples:
        >>> evaluate_run(EvaluateConfig(checkpoints=["a.ckpt"]))  # doctest: +SKIP

    Raises:
        ValueError: Without checkpoints, or with a different number of names.
    """
    if not cfg.checkpoints:
        raise ValueError("evaluate needs at least one checkpoint, got none")
    names = cfg.names or [Path(c).stem for c in cfg.checkpoints]
    if len(names) != len(cfg.checkpoints):
        raise ValueError(f"got {len(names)} names for {len(cfg.checkpoints)} checkpoints")
    if len(set(names)) != len(names):
        names = [f"{i + 1}: {n}" for i, n in enumerate(names)]
    device = resolve_device(cfg.device)
    eval_data = evaluation_data(cfg.data, cfg.eval)
    evaluations = {}
    for name, checkpoint in zip(names, cfg.checkpoints, strict=True):
        backbone = load_backbone(
            checkpoint,
            cfg.architecture,
            in_channels=cfg.data.in_channels,
            trusted=cfg.trust_checkpoint,
        )
        with eval_mode(backbone.to(device)):
            evaluation = evaluate_embeddings(
                name, backbone_embed_fn(backbone), eval_data, cfg.eval, device
            )
        assert evaluation is not None  # one process (no process group): always rank 0
        evaluations[name] = evaluation
    report = report_models(
        evaluations,
        eval_data,
        Path(cfg.out_dir),
        "Embedding evaluation report",
        None,
        asdict(cfg),
        cfg.eval.grid_queries,
    )
    (Path(cfg.out_dir) / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    return RunOutputs(results={n: e.result for n, e in evaluations.items()}, report=report)


def evaluate_checkpoints(
    checkpoints: list[str],
    out_dir: str,
    architecture: str = "resnet18_small",
    data: DataConfig | None = None,
    cfg: EvalConfig | None = None,
    names: list[str] | None = None,
    device: str = "auto",
) -> RunOutputs:
    """:func:`evaluate_run` with the settings as arguments (the signature of earlier versions)."""
    return evaluate_run(
        EvaluateConfig(
            checkpoints=list(checkpoints),
            names=names,
            architecture=architecture,
            out_dir=out_dir,
            device=device,
            data=data or DataConfig(),
            eval=cfg or EvalConfig(),
        )
    )


__all__ = [
    "ClassifierFn",
    "EmbeddingEvaluation",
    "EvaluationData",
    "RunOutputs",
    "backbone_embed_fn",
    "class_means_accuracy",
    "eval_split",
    "embed_split",
    "evaluate_checkpoints",
    "evaluate_embeddings",
    "evaluate_run",
    "evaluation_data",
    "report_models",
    "retrieval_examples",
    "score_embeddings",
]
