"""What varies between post-training runs: one recipe per output set, under its CLI name.

``posttrain`` (:mod:`lightly_grpo.chains.posttrain`) is one run for every output set; it asks the
recipe of ``cfg.output_set`` for four things:

- **data**: the training loader (and validation loader), how many images, the classes;
- **criterion** with its reward, around the output set (:meth:`OutputSetRecipe.criterion`);
- **callbacks**: refreshes of the output set, the sampler that mines batches from it;
- **extra metrics** of each evaluated model (clustering scores, neighbour purity).

A new output set is one recipe class here and one line in :data:`RECIPES`.

==============  =======================================================================
name            output set
==============  =======================================================================
``classes``     class prototypes, labeled images (the paper's setting)
``neighbors``   in-batch groups: the image's other view, rewarded reference neighbours
``kmeans``      balanced k-means centroids, swapped assignments (no labels)
==============  =======================================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from lightly_grpo.chains.config import PosttrainConfig
from lightly_grpo.chains.evaluate import EvaluationData, eval_split, evaluation_data
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
from lightly_grpo.data.indexed import IndexedDataset
from lightly_grpo.data.neighbor_sampler import NeighborBatchSampler
from lightly_grpo.data.splits import random_subset
from lightly_grpo.data.transforms import simclr_transform
from lightly_grpo.evaluation import RetrievalEvaluator
from lightly_grpo.evaluation.clustering import clustering_scores, neighbor_purity
from lightly_grpo.losses.policy import GRPORMPolicyLoss
from lightly_grpo.methods import class_criterion, policy_settings, uniformity_weight
from lightly_grpo.output_sets.kmeans_prototypes import KMeansPrototypes
from lightly_grpo.output_sets.neighbors import IN_BATCH_UNIFORMITY_WEIGHT, NeighborOutputSet
from lightly_grpo.output_sets.refresh import MineFromOutputSet, OutputSetRefresh, embed_bank
from lightly_grpo.rewards import build_reward, neighbor_reward
from lightly_grpo.stage import GRPORMStage


@dataclass
class TrainData:
    """The images post-training sees.

    Attributes:
        train: The labeled training batches (shuffled by the training seed); None for
            unlabeled runs, whose recipe builds the loader from ``items`` (see
            :meth:`OutputSetRecipe.loader`).
        init: What initialises the criterion: labeled images through the eval transform (class
            means), or the unlabeled bank (one view per item, dataset order).
        size: Number of training images.
        num_classes: Number of classes (of the labeled images, or of the test split).
        validation: Held-out train-split images for the per-epoch validation accuracy (labeled
            runs), or None.
        items: For unlabeled runs: the two-view ``(views, label, index)`` training items (the
            baselines' batches are drawn from them); None for labeled runs.
        indices: Which train-split images were trained on.
    """

    train: DataLoader[Any] | None
    init: Any
    size: int
    num_classes: int
    validation: DataLoader[Any] | None = None
    items: Dataset[Any] | None = None
    indices: list[int] = dataclasses.field(default_factory=list)


def labeled_data(cfg: PosttrainConfig) -> TrainData:
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
    return TrainData(
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
        indices=indices,
    )


def unlabeled_items(cfg: PosttrainConfig) -> tuple[Dataset[Any], Dataset[Any], list[int]]:
    """``cfg.unlabeled.images`` train-split images (all by default), picked by ``data_seed``;
    only images of ``cfg.neighbors.train_classes`` when it is set (retrieval mode).

    Returns:
        ``(items, bank, indices)``: ``(views, label, index)`` items with SimCLR views (labels are
        never trained on), the same images through the eval transform in the same order (index
        i = item i), and which train-split images they are.
    """
    data = cfg.data
    split = resolve_dataset(data.dataset, "train", None, root=data.data_root, seed=data.data_seed)
    pool = np.arange(len(split))
    if cfg.neighbors.train_classes is not None:
        pool = pool[np.isin(dataset_labels(split), cfg.neighbors.train_classes)]
    chosen = random_subset(len(pool), cfg.unlabeled.images, data.data_seed)
    indices = pool[chosen].tolist()
    transform = simclr_transform(data.input_size, data.in_channels)
    views = resolve_dataset(
        data.dataset, "train", transform, root=data.data_root, seed=data.data_seed
    )
    return (
        IndexedDataset(Subset(views, indices)),
        Subset(eval_split(data, "train"), indices),
        indices,
    )


def shuffled_loader(cfg: PosttrainConfig, items: Dataset[Any]) -> DataLoader[Any]:
    """Shuffled two-view batches (seeded by the training seed), the same for every method."""
    check_training_data(items, 1, drop_last=True, name="unlabeled training set")
    return make_loader(
        items,
        min(cfg.batch_size, len(items)),  # type: ignore[arg-type]
        shuffle=True,
        drop_last=True,
        num_workers=cfg.data.num_workers,
        seed=cfg.data.seed,
    )


def bn_loader(cfg: PosttrainConfig) -> DataLoader[Any]:
    """Train-split images (eval transform) that re-estimate BatchNorm statistics."""
    batch = cfg.eval.batch_size
    unlabeled = subset(eval_split(cfg.data, "train"), 50 * batch, cfg.data.data_seed + 3)
    return make_loader(unlabeled, batch, shuffle=False)


#: Extra metrics of one evaluated model: ``(name, test embeddings, test labels) -> metrics``.
ExtraMetrics = Callable[[str, Tensor, Tensor], dict[str, float]]


class OutputSetRecipe:
    """What a run with one output set needs; subclasses fill in the parts that differ.

    Attributes:
        name: The ``--output-set`` value.
        labeled: Whether training uses labels (the validation curve needs them).
        title: The report's title.
        unlabeled_baselines: Baselines this mode accepts besides the labeled methods
            (``lightly_grpo.methods``, which need labels).
        default_uniformity: Lambda of the uniformity reward when ``uniformity_reward`` is None.
    """

    name: ClassVar[str]
    labeled: ClassVar[bool] = False
    title: ClassVar[str] = "GRPO-RM post-training report"
    unlabeled_baselines: ClassVar[tuple[str, ...]] = ("simclr",)
    default_uniformity: ClassVar[float | None] = None

    def accepts_methods(self, cfg: PosttrainConfig) -> bool:
        """Whether the labeled methods of ``lightly_grpo.methods`` may train beside GRPO-RM."""
        return self.labeled

    def check(self, cfg: PosttrainConfig) -> None:
        """Fails before any training on settings this recipe cannot run."""

    def data(self, cfg: PosttrainConfig) -> TrainData:
        """The training images."""
        raise NotImplementedError

    def criterion(self, cfg: PosttrainConfig, dim: int, data: TrainData) -> GRPORMPolicyLoss:
        """The criterion (output set and reward) for ``dim``-d embeddings."""
        raise NotImplementedError

    def uniformity(self, cfg: PosttrainConfig) -> float:
        """The uniformity reward's lambda: the config's, or this output set's default."""
        if self.default_uniformity is None:
            return uniformity_weight(cfg)
        return uniformity_weight(cfg, self.default_uniformity)

    def initialize(self, stage: GRPORMStage, cfg: PosttrainConfig, data: TrainData) -> None:
        """Initialises the output set from the pretrained embeddings, before training."""
        stage.init_criterion(data.init)

    def loader(self, cfg: PosttrainConfig, data: TrainData, stage: GRPORMStage) -> DataLoader[Any]:
        """The training loader of GRPO-RM (may read the initialised output set)."""
        assert data.train is not None
        return data.train

    def baseline_data(self, cfg: PosttrainConfig, data: TrainData) -> TrainData:
        """The images a labeled method of ``lightly_grpo.methods`` trains on beside GRPO-RM."""
        return data

    def callbacks(self, cfg: PosttrainConfig, data: TrainData) -> list[pl.Callback]:
        """Callbacks beside the run's history (refreshes, mining)."""
        return []

    def use_distributed_sampler(self, cfg: PosttrainConfig) -> bool:
        """False when the training loader shards itself under DDP."""
        return True

    def evaluation_data(self, cfg: PosttrainConfig) -> EvaluationData:
        """The evaluation splits."""
        return evaluation_data(cfg.data, cfg.eval)

    def evaluator(self, cfg: PosttrainConfig) -> RetrievalEvaluator | None:
        """The evaluator's metrics (None: ``RetrievalEvaluator()``'s)."""
        return None

    def extra_metrics(self, cfg: PosttrainConfig, stage: GRPORMStage) -> ExtraMetrics | None:
        """Metrics beside the evaluator's, for each evaluated model (None: none); each is a
        registered ``"run"`` metric of :mod:`lightly_grpo.evaluation.metrics`."""
        return None

    def report_title(self, cfg: PosttrainConfig) -> str:
        return self.title

    def run_facts(self, data: TrainData) -> dict[str, Any]:
        """What the run's ``config.json`` records about the data under ``"run"``."""
        return {"labeled_images": data.size}


class ClassesRecipe(OutputSetRecipe):
    """Class prototypes on a labeled share of the train split (the paper's setting)."""

    name = "classes"
    labeled = True
    unlabeled_baselines = ()

    def data(self, cfg: PosttrainConfig) -> TrainData:
        return labeled_data(cfg)

    def criterion(self, cfg: PosttrainConfig, dim: int, data: TrainData) -> GRPORMPolicyLoss:
        reward = build_reward(cfg.accuracy_reward, self.uniformity(cfg), cfg.uniformity_form)
        return class_criterion(cfg, data.num_classes, dim, reward)


class UnlabeledRecipe(OutputSetRecipe):
    """The part shared by the output sets trained without labels: two SimCLR views per image,
    labels used only by the evaluation; clustering and neighbour-purity metrics."""

    title = "GRPO-RM unlabeled post-training report"

    def check(self, cfg: PosttrainConfig) -> None:
        if cfg.neighbors.train_classes is not None:
            raise ValueError(
                "train_classes (retrieval mode) needs --output-set neighbors, got "
                f"{cfg.output_set!r}"
            )

    def data(self, cfg: PosttrainConfig) -> TrainData:
        items, bank, indices = unlabeled_items(cfg)
        num_classes = len(np.unique(dataset_labels(eval_split(cfg.data, "test"))))
        return TrainData(
            train=None,
            init=bank,
            size=len(indices),
            num_classes=num_classes,
            items=items,
            indices=indices,
        )

    def loader(self, cfg: PosttrainConfig, data: TrainData, stage: GRPORMStage) -> DataLoader[Any]:
        assert data.items is not None
        return shuffled_loader(cfg, data.items)

    def initialize(self, stage: GRPORMStage, cfg: PosttrainConfig, data: TrainData) -> None:
        # Before fit there is no process group yet, so every DDP rank embeds the whole bank once;
        # when Lightning wraps the module, DDP broadcasts rank 0's output set to the others (the
        # refreshes during training are split across ranks).
        bank = embed_bank(
            stage, data.init, cfg.eval.batch_size, cfg.data.num_workers, cfg.trainer.progress
        )
        stage.criterion.output_set.initialize(bank)
        stage.criterion.output_set.snapshot_reference()

    def callbacks(self, cfg: PosttrainConfig, data: TrainData) -> list[pl.Callback]:
        if cfg.unlabeled.refresh_every <= 0:
            return []
        return [
            OutputSetRefresh(
                data.init,
                cfg.unlabeled.refresh_every,
                cfg.eval.batch_size,
                cfg.data.num_workers,
                progress=cfg.trainer.progress,
            )
        ]

    def evaluator(self, cfg: PosttrainConfig) -> RetrievalEvaluator | None:
        # Clustering scores of the evaluator's one k-means (as many clusters as classes present,
        # fewer in retrieval mode's unseen classes): the pretrained row is the "k-means on
        # pretrained embeddings" baseline.
        return RetrievalEvaluator(
            cluster_metrics=("nmi", "ami", "cluster_acc", "ari"), seed=cfg.data.data_seed
        )

    def extra_metrics(self, cfg: PosttrainConfig, stage: GRPORMStage) -> ExtraMetrics | None:
        def metrics(name: str, queries: Tensor, labels: Tensor) -> dict[str, float]:
            k = min(20, len(labels) - 1)
            return {"neighbor_purity": neighbor_purity(queries, labels, k=k)}

        return metrics

    def report_title(self, cfg: PosttrainConfig) -> str:
        return f"{self.title} ({cfg.output_set})"

    def run_facts(self, data: TrainData) -> dict[str, Any]:
        return {"unlabeled_images": data.size}


class NeighborsRecipe(UnlabeledRecipe):
    """In-batch groups: the other view of the image is correct, reference-space neighbours are
    rewarded; batches are mined so that neighbours share a batch. With ``train_classes`` the
    retrieval mode: same-class candidates are correct, evaluation on the unseen classes."""

    name = "neighbors"
    default_uniformity = IN_BATCH_UNIFORMITY_WEIGHT
    unlabeled_baselines = ("simclr",)

    def check(self, cfg: PosttrainConfig) -> None:
        if cfg.neighbors.train_classes is not None and len(set(cfg.neighbors.train_classes)) < 2:
            raise ValueError(
                f"train_classes needs at least 2 classes, got {cfg.neighbors.train_classes}"
            )

    def accepts_methods(self, cfg: PosttrainConfig) -> bool:
        return cfg.neighbors.train_classes is not None  # retrieval mode trains with labels

    def mines(self, cfg: PosttrainConfig) -> bool:
        """Whether the training batches are neighbour-mined (:class:`NeighborBatchSampler`)."""
        return cfg.neighbors.train_classes is None

    def criterion(self, cfg: PosttrainConfig, dim: int, data: TrainData) -> GRPORMPolicyLoss:
        output_set = NeighborOutputSet(
            data.size,
            dim,
            num_neighbors=cfg.neighbors.num_neighbors,
            use_labels=cfg.neighbors.train_classes is not None,
            # Without a neighbour reward the neighbours are ordinary wrong outputs.
            neighbors_positive=cfg.neighbors.neighbor_reward > 0,
        )
        reward = neighbor_reward(
            cfg.accuracy_reward, cfg.neighbors.neighbor_reward, self.uniformity(cfg)
        )
        return GRPORMPolicyLoss(output_set, reward=reward, **policy_settings(cfg))

    def loader(self, cfg: PosttrainConfig, data: TrainData, stage: GRPORMStage) -> DataLoader[Any]:
        output_set = stage.criterion.output_set
        if not (self.mines(cfg) and isinstance(output_set, NeighborOutputSet)):
            return super().loader(cfg, data, stage)
        # Half of every batch is one reference neighbour of the other half: a random batch of
        # 256 out of 60,000 images holds almost no neighbours to reward. Under DDP the sampler
        # reads its rank when iterated (Lightning starts the process group inside fit) and each
        # rank takes every W-th batch: a global batch is W mined batches.
        assert data.items is not None
        batch_size = min(cfg.batch_size, data.size)
        sampler = NeighborBatchSampler(
            output_set.neighbors.cpu(), batch_size, seed=cfg.data.seed, drop_last=True
        )
        return DataLoader(data.items, batch_sampler=sampler, num_workers=cfg.data.num_workers)

    def callbacks(self, cfg: PosttrainConfig, data: TrainData) -> list[pl.Callback]:
        callbacks = super().callbacks(cfg, data)
        if self.mines(cfg):
            callbacks.append(MineFromOutputSet())
        return callbacks

    def use_distributed_sampler(self, cfg: PosttrainConfig) -> bool:
        return not self.mines(cfg)

    def baseline_data(self, cfg: PosttrainConfig, data: TrainData) -> TrainData:
        """Retrieval mode: the same two-view batches in the same shuffled order as GRPO-RM's,
        and the bank for the criterion's initialisation."""
        assert data.items is not None
        labels = dataset_labels(data.init)
        return TrainData(
            train=shuffled_loader(cfg, data.items),
            init=make_loader(data.init, cfg.eval.batch_size, shuffle=False),
            size=data.size,
            num_classes=int(labels.max()) + 1,
            indices=data.indices,
        )

    def evaluation_data(self, cfg: PosttrainConfig) -> EvaluationData:
        """The evaluation splits; in retrieval mode only the classes that were not trained on."""
        data = evaluation_data(cfg.data, cfg.eval)
        if cfg.neighbors.train_classes is None:
            return data
        keep_train = ~np.isin(dataset_labels(data.train), cfg.neighbors.train_classes)
        keep_test = ~np.isin(dataset_labels(data.test), cfg.neighbors.train_classes)
        return dataclasses.replace(
            data,
            train=Subset(data.train, np.flatnonzero(keep_train).tolist()),
            test=Subset(data.test, np.flatnonzero(keep_test).tolist()),
            test_indices=data.test_indices[keep_test],
        )

    def report_title(self, cfg: PosttrainConfig) -> str:
        if cfg.neighbors.train_classes is None:
            return super().report_title(cfg)
        classes = cfg.neighbors.train_classes
        return f"GRPO-RM retrieval on unseen classes (trained on classes {classes})"


class KMeansRecipe(UnlabeledRecipe):
    """Balanced k-means centroids: the correct output is the cluster the other view falls in;
    the policy's own argmax is scored as ``policy_cluster_acc``, ``policy_nmi``, ``policy_ari``."""

    name = "kmeans"

    def criterion(self, cfg: PosttrainConfig, dim: int, data: TrainData) -> GRPORMPolicyLoss:
        output_set = KMeansPrototypes(
            cfg.kmeans.num_clusters or data.num_classes, dim, seed=cfg.data.seed
        )
        reward = build_reward(cfg.accuracy_reward, self.uniformity(cfg), cfg.uniformity_form)
        return GRPORMPolicyLoss(output_set, reward=reward, **policy_settings(cfg))

    def extra_metrics(self, cfg: PosttrainConfig, stage: GRPORMStage) -> ExtraMetrics | None:
        shared = super().extra_metrics(cfg, stage)
        assert shared is not None
        clusters = stage.criterion.output_set
        assert isinstance(clusters, KMeansPrototypes)

        def metrics(name: str, queries: Tensor, labels: Tensor) -> dict[str, float]:
            scores = shared(name, queries, labels)
            if name == "GRPO-RM":
                with torch.no_grad():
                    policy = clusters.predict(queries.to(clusters.centroids.device)).cpu()
                own = clustering_scores(policy, labels)
                scores.update({f"policy_{key}": value for key, value in own.items()})
            return scores

        return metrics


#: Every output set's recipe, under its ``--output-set`` name.
RECIPES: dict[str, type[OutputSetRecipe]] = {
    recipe.name: recipe for recipe in (ClassesRecipe, NeighborsRecipe, KMeansRecipe)
}


def output_set_recipe(name: str) -> OutputSetRecipe:
    """The recipe of ``--output-set name``.

    Examples:
        >>> type(output_set_recipe("kmeans")).__name__
        'KMeansRecipe'
    """
    if name not in RECIPES:
        raise ValueError(f"unknown output set {name!r}; choose from {tuple(RECIPES)}")
    return RECIPES[name]()


__all__ = [
    "RECIPES",
    "ClassesRecipe",
    "KMeansRecipe",
    "NeighborsRecipe",
    "OutputSetRecipe",
    "TrainData",
    "bn_loader",
    "labeled_data",
    "output_set_recipe",
    "shuffled_loader",
    "unlabeled_items",
]
