"""What a quality benchmark runs: data rows, methods, seeds, and the shared protocol.

Two presets: :data:`CPU_PRESET`, sized so that a 2-core CPU finishes it (pretraining included) in
under an hour, and :data:`GPU_PRESET`, all of Fashion-MNIST with more epochs, for one GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from lightly_grpo.chains.config import PosttrainConfig
from lightly_grpo.methods import METHODS, method_spec

#: Pretraining recipes a row's backbone can come from.
BACKBONE_SOURCES = ("simclr", "dino")


@dataclass(frozen=True)
class DataRow:
    """One row of the benchmark: which labeled images train, from which backbone.

    Attributes:
        name: Row name in tables and result paths.
        dataset: ``"fashion-mnist"`` or ``"digits"``.
        backbone: The pretraining recipe whose checkpoint every method starts from.
        label_fraction: Share of each class of the pool that is labeled (training images).
        pool_size: Train-split images (after the validation hold-out) the labeled images are
            drawn from; None uses all of them.
        imbalance_ratio: When set, the labeled images follow an exponential long-tailed profile
            with this ratio between the largest and the smallest class (instead of
            ``label_fraction``).
        epochs: Training epochs.
        batch_size: Training batch size.
        shifts: Out-of-distribution versions of the test set every model is also scored on
            (:data:`benchlib.shifts.SHIFTS`).
        methods: The methods of this row; None runs every method of the benchmark.
    """

    name: str
    dataset: str = "fashion-mnist"
    backbone: str = "simclr"
    label_fraction: float = 0.1
    pool_size: int | None = None
    imbalance_ratio: float | None = None
    epochs: int = 10
    batch_size: int = 128
    shifts: tuple[str, ...] = ()
    methods: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONE_SOURCES:
            raise ValueError(f"backbone must be one of {BACKBONE_SOURCES}, got {self.backbone!r}")
        if not 0 < self.label_fraction <= 1:
            raise ValueError(f"label_fraction must be in (0, 1], got {self.label_fraction}")
        if self.imbalance_ratio is not None and not self.imbalance_ratio >= 1:
            raise ValueError(f"imbalance_ratio must be >= 1, got {self.imbalance_ratio}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(
                f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}"
            )
        for method in self.methods or ():
            method_spec(method)  # raises for an unknown method or setting


@dataclass(frozen=True)
class PretrainSpec:
    """How a missing pretraining checkpoint is made (``lightly-grpo pretrain`` settings)."""

    epochs: int = 4
    images: int | None = 6144
    batch_size: int = 256


@dataclass(frozen=True)
class BenchmarkConfig:
    """The whole benchmark: rows x methods x seeds under one protocol.

    Attributes:
        rows: The data rows.
        methods: Methods run on rows that do not list their own.
        seeds: Training seeds (initialisation, shuffling, augmentation); the images are fixed by
            ``data_seed`` for every seed and method.
        data_seed: Seed of the validation hold-out, the labeled subsets and the evaluated images.
        settings: The run config every method is built from (learning rates, weight decay,
            BatchNorm policy, temperature, reward weights; learning rates are then tuned, see
            ``lr_grid``).
        lr_grid: Multipliers of each method's tuned learning rate (``MethodSpec.tuned_lr``),
            tried on ``tune_row`` with the first seed; the one with the best validation score
            is used for every seed and row. ``(1.0,)`` turns tuning off.
        criterion_lr_grid: Multipliers of ``lr_criterion`` (prototypes, linear head, proxies)
            tried with each of ``lr_grid`` for the methods that have criterion parameters
            (``MethodSpec.tunes_criterion``): the grid is then two-dimensional.
        tune_row: Name of the row the learning rates are tuned on (default: the first row).
        input_size: Image side in pixels.
        augment: Augmentation of the labeled images (``posttrain_transform`` kinds).
        val_images: Train-split images held out for validation (never trained on).
        bank_images: Train-split images in the kNN bank (eval transform, fixed).
        test_images: Test-split images scored (fixed); None uses all.
        shift_images: How many of those test images the shifted test sets hold (the first ones
            by index of the randomly drawn test images); None: all.
        architecture: Backbone architecture of the pretraining.
        pretrain: How missing checkpoints are made.
        eval_batch_size: Batch size when embedding.
        data_root: Directory of the Fashion-MNIST files, if not the Debian package's.
        num_workers: ``DataLoader`` worker processes of the training batches.
    """

    rows: tuple[DataRow, ...]
    methods: tuple[str, ...] = tuple(METHODS)
    seeds: tuple[int, ...] = (0, 1, 2)
    data_seed: int = 0
    settings: PosttrainConfig = field(default_factory=PosttrainConfig)
    lr_grid: tuple[float, ...] = (1 / 3, 1.0, 3.0)
    criterion_lr_grid: tuple[float, ...] = (1.0,)
    tune_row: str | None = None
    input_size: int = 28
    augment: str = "light"
    val_images: int = 1000
    bank_images: int | None = 10000
    test_images: int | None = None
    shift_images: int | None = None
    architecture: str = "resnet18_small"
    pretrain: PretrainSpec = field(default_factory=PretrainSpec)
    eval_batch_size: int = 512
    data_root: str | None = None
    num_workers: int = 0

    def __post_init__(self) -> None:
        if not self.rows:
            raise ValueError("a benchmark needs at least one row")
        names = [row.name for row in self.rows]
        if len(set(names)) != len(names):
            raise ValueError(f"row names must be unique, got {names}")
        for method in self.methods:
            method_spec(method)  # raises for an unknown method or setting
        if not self.seeds:
            raise ValueError("a benchmark needs at least one seed")
        if not self.lr_grid or any(not m > 0 for m in self.lr_grid):
            raise ValueError(f"lr_grid must hold positive multipliers, got {self.lr_grid}")
        # Result files name the rate with 3 significant digits: two rates must not share one.
        if len({f"{m:.3g}" for m in self.lr_grid}) != len(self.lr_grid):
            raise ValueError(f"lr_grid multipliers must differ in 3 digits, got {self.lr_grid}")
        grid = self.criterion_lr_grid
        if not grid or any(not m > 0 for m in grid) or len({f"{m:.3g}" for m in grid}) != len(grid):
            raise ValueError(
                f"criterion_lr_grid must hold positive multipliers that differ in 3 digits, "
                f"got {grid}"
            )
        if self.tune_row is not None and self.tune_row not in names:
            raise ValueError(f"tune_row {self.tune_row!r} is not a row; rows: {names}")

    @property
    def tuning_row(self) -> DataRow:
        """The row learning rates are tuned on."""
        name = self.tune_row or self.rows[0].name
        return next(row for row in self.rows if row.name == name)

    def row_methods(self, row: DataRow) -> tuple[str, ...]:
        """The methods run on ``row``."""
        return row.methods if row.methods is not None else self.methods

    def select(
        self,
        rows: list[str] | None = None,
        methods: list[str] | None = None,
        seeds: list[int] | None = None,
    ) -> BenchmarkConfig:
        """A subset of the benchmark (rows, methods and seeds by name); None keeps all.

        Examples:
            >>> cfg = CPU_PRESET.select(rows=["digits"], methods=["ce-linear"], seeds=[0])
            >>> [r.name for r in cfg.rows], cfg.methods, cfg.seeds
            (['digits'], ('ce-linear',), (0,))
        """
        changes: dict[str, Any] = {}
        if rows is not None:
            known = {row.name: row for row in self.rows}
            missing = [name for name in rows if name not in known]
            if missing:
                raise ValueError(f"unknown row(s) {missing}; rows: {list(known)}")
            changes["rows"] = tuple(known[name] for name in rows)
            if self.tune_row is None or self.tune_row not in rows:
                changes["tune_row"] = None
        if methods is not None:
            changes["methods"] = tuple(methods)
            changes["rows"] = tuple(
                replace(row, methods=tuple(m for m in (row.methods or methods) if m in methods))
                for row in changes.get("rows", self.rows)
            )
        if seeds is not None:
            changes["seeds"] = tuple(seeds)
        return replace(self, **changes)


# The methods of the secondary rows on the CPU: the paper's baseline, the metric-learning losses,
# and GRPO-RM's default and its reference-KL variant (the whole ablation runs on the main row).
_CPU_SECONDARY = ("ce-linear", "supcon", "proxy-anchor", "grpo-uniformity", "grpo-kl")
# Sizes of the CPU presets: a ResNet-18 step of 64 images at 28 px takes ~0.5 s on a 2-core
# CPU and embedding runs at ~600 images/s, so a main-row run costs ~45 s.
_CPU_SIZES: dict[str, Any] = {
    "val_images": 500,
    "bank_images": 3000,
    "test_images": 2000,
    "shift_images": 1000,
    "pretrain": PretrainSpec(epochs=4, images=4096, batch_size=256),
}

#: Sized for a 2-core CPU, under an hour with the SimCLR pretraining: every method on 10% of the
#: labels (with the shifted test sets), the secondary methods on a long-tailed set and on digits.
CPU_PRESET = BenchmarkConfig(
    rows=(
        DataRow(
            "fmnist-10%",
            label_fraction=0.1,
            pool_size=6000,
            epochs=6,
            batch_size=64,
            shifts=("rotation", "noise", "blur", "rotation+noise"),
        ),
        DataRow(
            "fmnist-long-tail",
            imbalance_ratio=100.0,
            pool_size=4000,
            epochs=3,
            batch_size=64,
            shifts=("rotation+noise",),
            methods=_CPU_SECONDARY,
        ),
        DataRow(
            "digits",
            dataset="digits",
            label_fraction=1.0,
            epochs=2,
            batch_size=64,
            methods=_CPU_SECONDARY,
        ),
    ),
    **_CPU_SIZES,
)

#: The rest of the CPU rows (another hour): all labels of a smaller pool, and the DINO backbone.
CPU_EXTRA_PRESET = BenchmarkConfig(
    rows=(
        DataRow(
            "fmnist-100%",
            label_fraction=1.0,
            pool_size=2000,
            epochs=2,
            batch_size=128,
            methods=_CPU_SECONDARY,
        ),
        DataRow(
            "fmnist-10%-dino",
            backbone="dino",
            label_fraction=0.1,
            pool_size=6000,
            epochs=6,
            batch_size=64,
            methods=_CPU_SECONDARY,
        ),
    ),
    tune_row="fmnist-10%-dino",  # its own backbone's rates, tuned as the main row's are
    **_CPU_SIZES,
)

#: All of Fashion-MNIST, every method on every row, for one GPU.
GPU_PRESET = BenchmarkConfig(
    rows=(
        DataRow(
            "fmnist-10%",
            label_fraction=0.1,
            epochs=30,
            batch_size=256,
            shifts=("rotation", "noise", "blur", "rotation+noise"),
        ),
        DataRow("fmnist-100%", label_fraction=1.0, epochs=15, batch_size=256),
        DataRow(
            "fmnist-long-tail",
            imbalance_ratio=100.0,
            epochs=30,
            batch_size=256,
            shifts=("rotation+noise",),
        ),
        DataRow("fmnist-10%-dino", backbone="dino", label_fraction=0.1, epochs=30, batch_size=256),
        DataRow("digits", dataset="digits", label_fraction=1.0, epochs=20, batch_size=128),
    ),
    seeds=(0, 1, 2),
    val_images=5000,
    bank_images=None,
    test_images=None,
    pretrain=PretrainSpec(epochs=100, images=None, batch_size=512),
)

#: Presets by name (the recipe's ``--preset``).
PRESETS: dict[str, BenchmarkConfig] = {
    "cpu": CPU_PRESET,
    "cpu-extra": CPU_EXTRA_PRESET,
    "gpu": GPU_PRESET,
}

__all__ = [
    "BACKBONE_SOURCES",
    "CPU_EXTRA_PRESET",
    "CPU_PRESET",
    "GPU_PRESET",
    "PRESETS",
    "BenchmarkConfig",
    "DataRow",
    "PretrainSpec",
]
