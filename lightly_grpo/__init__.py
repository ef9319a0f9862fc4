"""lightly-grpo: GRPO-RM post-training for backbones pretrained with lightly."""

from __future__ import annotations

from lightly_grpo.backbones import build_backbone, export_backbone, load_backbone
from lightly_grpo.classification_loss import GRPORMClassificationLoss
from lightly_grpo.loss import GRPORMLoss, fused_accuracy_uniformity_loss, group_advantages
from lightly_grpo.output_sets import ClassPrototypes
from lightly_grpo.rewards import AccuracyReward, Reward, RewardInputs, UniformityReward
from lightly_grpo.stage import GRPORMStage

__version__ = "0.1.0"

__all__ = [
    "AccuracyReward",
    "ClassPrototypes",
    "GRPORMClassificationLoss",
    "GRPORMLoss",
    "GRPORMStage",
    "Reward",
    "RewardInputs",
    "UniformityReward",
    "build_backbone",
    "export_backbone",
    "fused_accuracy_uniformity_loss",
    "group_advantages",
    "load_backbone",
]
