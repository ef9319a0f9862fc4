"""lightly-grpo: GRPO-RM post-training for backbones pretrained with lightly.

The method is defined in ``docs/method.md``; the layout and where new parts go in
``docs/architecture.md``.
"""

from __future__ import annotations

from lightly_grpo.backbones import build_backbone, export_backbone, load_backbone
from lightly_grpo.baselines import CrossEntropyBaseline, LinearProbeBaseline, MetricLossBaseline
from lightly_grpo.callbacks import RetrievalEvaluationCallback
from lightly_grpo.evaluation import RetrievalEvaluator, RetrievalResult, make_knn_func
from lightly_grpo.index import knn_search, spherical_kmeans
from lightly_grpo.losses import (
    GRPORMClassificationLoss,
    GRPORMLoss,
    GRPORMNeighborLoss,
    GRPORMPolicyLoss,
    fused_accuracy_uniformity_loss,
    group_advantages,
)
from lightly_grpo.output_sets import (
    ClassPrototypes,
    KMeansPrototypes,
    NeighborOutputSet,
    OutputGroup,
    OutputSet,
    OutputSetRefresh,
)
from lightly_grpo.posttraining import PostTrainingModule
from lightly_grpo.rewards import (
    AccuracyReward,
    MaskReward,
    Reward,
    RewardInputs,
    UniformityReward,
    neighbor_reward,
)
from lightly_grpo.stage import GRPORMStage

__version__ = "0.3.0"

__all__ = [
    "AccuracyReward",
    "ClassPrototypes",
    "KMeansPrototypes",
    "MaskReward",
    "NeighborOutputSet",
    "OutputSetRefresh",
    "neighbor_reward",
    "CrossEntropyBaseline",
    "LinearProbeBaseline",
    "GRPORMClassificationLoss",
    "GRPORMLoss",
    "GRPORMNeighborLoss",
    "GRPORMPolicyLoss",
    "GRPORMStage",
    "MetricLossBaseline",
    "OutputGroup",
    "OutputSet",
    "PostTrainingModule",
    "RetrievalEvaluationCallback",
    "RetrievalEvaluator",
    "RetrievalResult",
    "Reward",
    "RewardInputs",
    "UniformityReward",
    "build_backbone",
    "export_backbone",
    "fused_accuracy_uniformity_loss",
    "group_advantages",
    "knn_search",
    "load_backbone",
    "make_knn_func",
    "spherical_kmeans",
]
