"""Former home of the chains, kept so that existing imports work: see :mod:`lightly_grpo.chains`.

Examples:
    >>> from lightly_grpo.pipeline import PosttrainConfig
    >>> PosttrainConfig().label_fraction
    0.1
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightly_grpo.chains.config import (
    DataConfig,
    EvalConfig,
    PosttrainConfig,
    PretrainConfig,
    TrainerConfig,
)
from lightly_grpo.chains.evaluate import (
    EvaluationData,
    backbone_embed_fn,
    class_means_accuracy,
    evaluate_checkpoints,
    evaluate_embeddings,
    evaluation_data,
    report_models,
    retrieval_examples,
)
from lightly_grpo.chains.posttrain import build_stage, posttrain
from lightly_grpo.chains.pretrain import pretrain
from lightly_grpo.data import make_loader, posttrain_transform
from lightly_grpo.embedding import EmbedFn, embed_loader


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated: use {new}", DeprecationWarning, stacklevel=3)


def embed_dataset(
    embed: EmbedFn, dataset: Dataset[Any], batch_size: int, device: torch.device, desc: str
) -> tuple[Tensor, Tensor]:
    """Deprecated: use :func:`lightly_grpo.embedding.embed_loader`."""
    _deprecated("lightly_grpo.pipeline.embed_dataset", "lightly_grpo.embedding.embed_loader")
    loader = make_loader(dataset, batch_size, shuffle=False)
    embeddings, labels = embed_loader(embed, loader, device, progress=True, desc=desc)
    assert labels is not None  # embed_loader requires labels by default
    return embeddings, labels


def history_rows(metrics_csv: Path) -> list[dict[str, float]]:
    """Deprecated: the chains record history with :class:`lightly_grpo.chains.EpochHistory`.

    Per-epoch rows of a Lightning ``CSVLogger`` file: ``train/*_epoch`` and ``val/*`` columns.
    """
    _deprecated("lightly_grpo.pipeline.history_rows", "lightly_grpo.chains.EpochHistory")
    rows: dict[int, dict[str, float]] = {}
    with open(metrics_csv, newline="") as handle:
        for record in csv.DictReader(handle):
            epoch = int(record["epoch"])
            row = rows.setdefault(epoch, {"epoch": float(epoch + 1)})
            for name, value in record.items():
                if value and "/" in name and not name.endswith("_step"):
                    row[name.removesuffix("_epoch")] = float(value)
    return [rows[epoch] for epoch in sorted(rows)]


__all__ = [
    "DataConfig",
    "EmbedFn",
    "EvalConfig",
    "EvaluationData",
    "PosttrainConfig",
    "PretrainConfig",
    "TrainerConfig",
    "backbone_embed_fn",
    "build_stage",
    "class_means_accuracy",
    "embed_dataset",
    "evaluate_checkpoints",
    "evaluate_embeddings",
    "evaluation_data",
    "history_rows",
    "posttrain",
    "posttrain_transform",
    "pretrain",
    "report_models",
    "retrieval_examples",
]
