"""The chains a user runs: pretraining -> GRPO-RM post-training -> evaluation -> report.

One module per chain, each a function over a config dataclass, so the command line, the recipes
and the tests share one implementation:

- :mod:`~lightly_grpo.chains.config`: every setting, declared once with its help and flag;
- :mod:`~lightly_grpo.chains.flags`: the command-line flags generated from the configs, and the
  checked merge of overlays, ``--config`` files and flags;
- :mod:`~lightly_grpo.chains.runtime`: the Lightning Trainer, the per-epoch history, devices;
- :mod:`~lightly_grpo.chains.pretrain`, :mod:`~lightly_grpo.chains.posttrain`,
  :mod:`~lightly_grpo.chains.evaluate`, :mod:`~lightly_grpo.chains.demo`: the chains.

Examples:
    >>> from lightly_grpo.chains import PosttrainConfig, merge_config
    >>> merge_config(PosttrainConfig(), {"epochs": 3, "data": {"dataset": "digits"}}).epochs
    3
"""

from __future__ import annotations

from lightly_grpo.chains.config import (
    DEMO_OVERLAY,
    DataConfig,
    DemoConfig,
    EvalConfig,
    EvaluateConfig,
    PosttrainConfig,
    PretrainConfig,
    TrainerConfig,
)
from lightly_grpo.chains.demo import demo, demo_config
from lightly_grpo.chains.evaluate import (
    EmbeddingEvaluation,
    EvaluationData,
    RunOutputs,
    backbone_embed_fn,
    class_means_accuracy,
    evaluate_checkpoints,
    evaluate_embeddings,
    evaluate_run,
    evaluation_data,
    report_models,
    retrieval_examples,
)
from lightly_grpo.chains.flags import load_config_file, merge_config
from lightly_grpo.chains.posttrain import build_stage, posttrain
from lightly_grpo.chains.pretrain import pretrain
from lightly_grpo.chains.runtime import (
    EpochHistory,
    make_trainer,
    resolve_device,
    save_final_checkpoint,
)

__all__ = [
    "DEMO_OVERLAY",
    "DataConfig",
    "DemoConfig",
    "EmbeddingEvaluation",
    "EpochHistory",
    "EvalConfig",
    "EvaluateConfig",
    "EvaluationData",
    "PosttrainConfig",
    "PretrainConfig",
    "RunOutputs",
    "TrainerConfig",
    "backbone_embed_fn",
    "build_stage",
    "class_means_accuracy",
    "demo",
    "demo_config",
    "evaluate_checkpoints",
    "evaluate_embeddings",
    "evaluate_run",
    "evaluation_data",
    "load_config_file",
    "make_trainer",
    "merge_config",
    "posttrain",
    "pretrain",
    "report_models",
    "resolve_device",
    "save_final_checkpoint",
    "retrieval_examples",
]
