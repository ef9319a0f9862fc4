"""Runs a benchmark: one result file per (row, method, learning rate, seed), resumable.

A finished run's result is written atomically (a temporary file renamed into place), so a killed
benchmark restarted with the same output folder skips every finished run and redoes at most the
one it was killed in. Learning rates are tuned first (:func:`tune_learning_rates`), on the
validation images of the tuning row with the first seed; the chosen rates go to
``tuning.json`` and every row and seed then runs with them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch import Tensor, nn

from benchlib.config import BenchmarkConfig, DataRow
from benchlib.data import RowData, row_data
from lightly_grpo.backbones import backbone_output_dim, load_backbone
from lightly_grpo.chains.config import EvalConfig, PretrainConfig, TrainerConfig
from lightly_grpo.chains.evaluate import backbone_embed_fn, embed_split, score_embeddings
from lightly_grpo.chains.posttrain import fit_stage
from lightly_grpo.chains.runtime import EpochHistory, resolve_device
from lightly_grpo.data import make_loader
from lightly_grpo.data.config import DataConfig
from lightly_grpo.embedding import eval_mode
from lightly_grpo.evaluation import RetrievalEvaluator
from lightly_grpo.methods import method_spec, with_lr
from lightly_grpo.posttraining import PostTrainingModule

#: The method name of the pretrained backbone's row (no post-training, evaluated once).
PRETRAINED = "pretrained"


@dataclass
class RunResult:
    """What one run measured.

    Attributes:
        row: Row name.
        method: Method name (or :data:`PRETRAINED`).
        seed: Training seed.
        lr: The tuned learning rate the run used (``MethodSpec.tuned_lr``).
        lr_criterion: The criterion's learning rate when it was tuned too (None: the config's).
        metrics: Test metrics (:func:`~lightly_grpo.chains.evaluate.score_embeddings`).
        shifted: Shift name -> the same metrics on the shifted test set.
        validation: Validation metrics (the learning rate is selected on ``val_score``).
        val_score: Validation classifier accuracy, or validation kNN top-1 (k=20) against the
            labeled images for a method without a classifier.
        history: Per-epoch logged metrics (``val/accuracy`` is the accuracy curve).
        train_seconds: Wall time of ``trainer.fit``.
        fingerprint: Hash of every setting the run's numbers depend on (see
            :meth:`Benchmark.fingerprint`); a stored result with another one is not reused.
    """

    row: str
    method: str
    seed: int
    lr: float
    metrics: dict[str, float]
    shifted: dict[str, dict[str, float]] = field(default_factory=dict)
    validation: dict[str, float] = field(default_factory=dict)
    val_score: float = float("nan")
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    fingerprint: str = ""
    lr_criterion: float | None = None


#: A point of the learning-rate grid: (tuned rate, criterion rate or None).
Rates = tuple[float, float | None]


def result_path(
    out_dir: Path, row: str, method: str, lr: float, seed: int, lr_criterion: float | None = None
) -> Path:
    """Where a run's result lives (``runs/<row>/<method>/lr<lr>[_clr<lr_criterion>]_seed<seed>``
    ``.json``)."""
    safe_row = row.replace("%", "pct").replace("/", "_")
    rates = f"lr{lr:.3g}" if lr_criterion is None else f"lr{lr:.3g}_clr{lr_criterion:.3g}"
    return out_dir / "runs" / safe_row / method / f"{rates}_seed{seed}.json"


def write_json_atomic(path: Path, payload: Any) -> None:
    """Writes JSON so that ``path`` is either absent, the old file, or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def load_result(path: Path) -> RunResult | None:
    """The result stored at ``path``, or None when the run has not finished."""
    if not path.is_file():
        return None
    return RunResult(**json.loads(path.read_text()))


def _quiet_lightning() -> None:
    # A benchmark builds ~100 trainers: their start-up banners would bury the progress lines.
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*treespec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # Frozen BatchNorm (the default policy) is eval mode on purpose.
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")


class Benchmark:
    """Runs the rows x methods x seeds of a :class:`BenchmarkConfig` into ``out_dir``.

    Args:
        cfg: What to run.
        out_dir: Result folder (results, ``tuning.json``, checkpoints, table).
        checkpoints: Backbone source -> checkpoint; missing sources are pretrained into
            ``out_dir/pretrain/<source>`` with ``cfg.pretrain`` (or reused from there).
        accelerator: Lightning accelerator of the runs.
        log: Where progress lines go.
    """

    def __init__(
        self,
        cfg: BenchmarkConfig,
        out_dir: str | os.PathLike[str],
        checkpoints: dict[str, str] | None = None,
        accelerator: str = "auto",
        log: Callable[[str], None] = print,
    ) -> None:
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.checkpoints = dict(checkpoints or {})
        self.accelerator = accelerator
        self.device = resolve_device(accelerator)  # where evaluation embeds, as Lightning picks
        self.log = log
        self._data: dict[str, RowData] = {}
        self._backbones: dict[str, nn.Module] = {}
        self._seen: set[Path] = set()
        self._planned = self.planned_runs()

    def planned_runs(self) -> int:
        """How many trainings the whole benchmark takes (tuning included, pretraining not)."""
        cfg = self.cfg
        methods = {m for row in cfg.rows for m in cfg.row_methods(row)}
        tuned_again = len(cfg.row_methods(cfg.tuning_row))  # the first seed's runs are reused
        runs = sum(len(cfg.row_methods(row)) * len(cfg.seeds) for row in cfg.rows)
        return len(methods) * len(cfg.lr_grid) + runs - tuned_again

    # ------------------------------------------------------------------ inputs
    def checkpoint(self, source: str) -> Path:
        """The checkpoint of a backbone source, pretraining it when it does not exist yet."""
        if source in self.checkpoints:
            return Path(self.checkpoints[source])
        folder = self.out_dir / "pretrain" / source
        exported = folder / "backbone.pt"
        spec = self.cfg.pretrain
        wanted: dict[str, Any] = {"epochs": spec.epochs, "max_images": spec.images}
        wanted |= {"batch_size": spec.batch_size}
        wanted |= {"method": source, "architecture": self.cfg.architecture}
        if exported.is_file():
            saved = json.loads((folder / "config.json").read_text())
            differing = {k: (saved.get(k), v) for k, v in wanted.items() if saved.get(k) != v}
            if differing:
                raise ValueError(
                    f"{folder} holds a {source} pretraining with other settings "
                    f"(found, wanted): {differing}; use another output folder"
                )
        else:
            from lightly_grpo.chains.pretrain import pretrain

            self.log(f"pretraining {source}: {spec.images} images x {spec.epochs} epochs")
            started = time.perf_counter()
            pretrain(
                PretrainConfig(
                    out_dir=str(folder),
                    architecture=self.cfg.architecture,
                    epochs=spec.epochs,
                    batch_size=spec.batch_size,
                    max_images=spec.images,
                    method=source,
                    data=DataConfig(
                        dataset="fashion-mnist",
                        data_root=self.cfg.data_root,
                        num_workers=self.cfg.num_workers,
                        input_size=self.cfg.input_size,
                        seed=self.cfg.data_seed,
                        data_seed=self.cfg.data_seed,
                    ),
                    trainer=TrainerConfig(accelerator=self.accelerator, progress=True),
                )
            )
            seconds = time.perf_counter() - started
            write_json_atomic(folder / "pretrain_seconds.json", {"seconds": round(seconds, 1)})
        return exported

    def backbone(self, source: str) -> nn.Module:
        """A fresh copy of the pretrained backbone of ``source``."""
        if source not in self._backbones:
            self._backbones[source] = load_backbone(
                self.checkpoint(source), self.cfg.architecture, in_channels=1
            )
        return copy.deepcopy(self._backbones[source])

    def fingerprint(self, row: DataRow) -> str:
        """A hash of everything a run of ``row`` depends on besides method, rate and seed: the
        row (but not its method list), the shared settings, the image counts, the backbone."""
        cfg = self.cfg
        source = self.checkpoints.get(row.backbone)
        facts = {
            "row": {k: v for k, v in asdict(row).items() if k != "methods"},
            "settings": asdict(cfg.settings),
            "images": [cfg.val_images, cfg.bank_images, cfg.test_images, cfg.shift_images],
            "protocol": [cfg.data_seed, cfg.input_size, cfg.augment, cfg.architecture],
            "backbone": str(source) if source else asdict(cfg.pretrain),
        }
        text = json.dumps(facts, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _stored(self, path: Path, row: DataRow) -> RunResult | None:
        stored = load_result(path)
        if stored is not None and stored.fingerprint != self.fingerprint(row):
            raise ValueError(
                f"{path} holds a run made with other settings (fingerprint "
                f"{stored.fingerprint or 'none'}, now {self.fingerprint(row)}): use another output "
                "folder, or delete the folder's runs/ to start again"
            )
        return stored

    def data(self, row: DataRow) -> RowData:
        if row.name not in self._data:
            self._data[row.name] = row_data(self.cfg, row)
        return self._data[row.name]

    # ------------------------------------------------------------------ one run
    def _evaluate(
        self, embed: Callable[[Tensor], Tensor], data: RowData, classifier: Any, name: str
    ) -> tuple[dict[str, float], dict[str, dict[str, float]], dict[str, float]]:
        device = self.device
        eval_cfg = EvalConfig(batch_size=self.cfg.eval_batch_size)

        def embedded(dataset: Any, split: str) -> tuple[Tensor, Tensor]:
            # One line per run is the benchmark's progress; a bar per split would bury it.
            return embed_split(f"{name}: {split}", embed, dataset, eval_cfg, device, False)

        bank, labeled = embedded(data.bank, "bank"), embedded(data.labeled, "labeled")
        test = embedded(data.test, "test")
        metrics = score_embeddings(bank, test, classifier, progress=False).metrics
        shifted = {
            shift: score_embeddings(bank, embedded(ds, shift), classifier, progress=False).metrics
            for shift, ds in data.shifted.items()
        }
        # Selection needs kNN top-1 (k=20) against the labeled images, which can be fewer than
        # the k=200 protocol asks for, and the classifier accuracy.
        selection = RetrievalEvaluator(knn_protocols=("dino",), nmi=False, per_class=False)
        validation = score_embeddings(
            labeled, embedded(data.validation, "validation"), classifier, False, selection
        ).metrics
        return metrics, shifted, validation

    def run_pretrained(self, row: DataRow) -> RunResult:
        """The pretrained backbone of ``row`` without post-training (evaluated once)."""
        path = result_path(self.out_dir, row.name, PRETRAINED, 0.0, 0)
        stored = self._stored(path, row)
        if stored is not None:
            return stored
        backbone = self.backbone(row.backbone).to(self.device)
        with eval_mode(backbone):
            metrics, shifted, validation = self._evaluate(
                backbone_embed_fn(backbone), self.data(row), None, f"{row.name} pretrained"
            )
        result = RunResult(
            row.name,
            PRETRAINED,
            0,
            0.0,
            metrics,
            shifted,
            validation,
            validation["knn_top1_dino"],
            fingerprint=self.fingerprint(row),
        )
        write_json_atomic(path, asdict(result))
        return result

    def run(
        self, row: DataRow, method: str, seed: int, lr: float, lr_criterion: float | None = None
    ) -> RunResult:
        """Trains and evaluates one method on one row with one seed (or loads the result);
        ``lr_criterion`` overrides the criterion's learning rate."""
        path = result_path(self.out_dir, row.name, method, lr, seed, lr_criterion)
        stored = self._stored(path, row)
        if stored is not None:
            return stored
        spec = method_spec(method)
        data = self.data(row)
        # Everything that may draw random numbers the first time (loading or pretraining the
        # backbone) happens before seeding: a run is the same first in a process or resumed.
        backbone = self.backbone(row.backbone)
        size = backbone_output_dim(backbone, (1, self.cfg.input_size, self.cfg.input_size))
        settings = with_lr(spec.config(self.cfg.settings), spec.tuned_lr, lr)
        if lr_criterion is not None:
            settings = with_lr(settings, "lr_criterion", lr_criterion)
        pl.seed_everything(seed, workers=True, verbose=False)
        module: PostTrainingModule = spec.build(backbone, data.num_classes, size, settings)
        eval_cfg = EvalConfig(batch_size=self.cfg.eval_batch_size)
        labeled = make_loader(data.labeled, eval_cfg.batch_size, shuffle=False)
        history = EpochHistory()
        _quiet_lightning()
        trainer = pl.Trainer(
            max_epochs=row.epochs,
            accelerator=self.accelerator,
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=[history],
        )
        # The run's one fit sequence (lightly_grpo.chains.posttrain.fit_stage), on a quiet trainer.
        _, seconds = fit_stage(
            trainer,
            module,
            data.train_loader(row.batch_size, seed),
            make_loader(data.validation, eval_cfg.batch_size, shuffle=False),
            initialize=lambda: module.init_criterion(labeled),
            batchnorm_images=lambda: labeled,
        )
        classifier = module.classifier_fn()
        with eval_mode(module):
            metrics, shifted, validation = self._evaluate(
                module.forward, data, classifier, f"{row.name} {method}"
            )
        score = validation.get("classifier_accuracy", validation["knn_top1_dino"])
        result = RunResult(
            row.name,
            method,
            seed,
            lr,
            metrics,
            shifted,
            validation,
            score,
            history.rows,
            seconds,
            self.fingerprint(row),
            lr_criterion,
        )
        write_json_atomic(path, asdict(result))
        return result

    # ------------------------------------------------------------------ the whole benchmark
    def tune_learning_rates(self) -> dict[str, Rates]:
        """Per method, the point of ``cfg.lr_grid`` (times ``cfg.criterion_lr_grid`` for methods
        that tune their criterion's rate too) with the best validation score on the tuning row
        (first seed); written to ``tuning.json`` with every score and whether the optimum lies
        at an edge of the grid."""
        row = self.cfg.tuning_row
        seed = self.cfg.seeds[0]
        methods = list(dict.fromkeys(m for r in self.cfg.rows for m in self.cfg.row_methods(r)))
        chosen: dict[str, Rates] = {}
        report: dict[str, Any] = {"row": row.name, "seed": seed, "methods": {}}
        for method in methods:
            spec = method_spec(method)
            config = spec.config(self.cfg.settings)
            base = getattr(config, spec.tuned_lr)
            criterion_grid = self._criterion_grid(spec.tunes_criterion)
            scores: dict[Rates, float] = {}
            for multiplier in self.cfg.lr_grid:
                for criterion in criterion_grid:
                    rates: Rates = (
                        base * multiplier,
                        None if criterion is None else config.lr_criterion * criterion,
                    )
                    scores[rates] = self._run_logged(row, method, seed, *rates).val_score
            # A NaN score (a diverged run) never wins; ties go to the rates closest to the
            # defaults.
            best = max(
                scores,
                key=lambda rates: (
                    -math.inf if math.isnan(scores[rates]) else scores[rates],
                    -abs(rates[0] - base),
                    -abs((rates[1] or config.lr_criterion) - config.lr_criterion),
                ),
            )
            chosen[method] = best
            # An optimum at the edge of a grid of several rates says the grid is too narrow
            # (the converged protocol needs it inside).
            at_edge = _at_edge(best[0], [r[0] for r in scores]) or _at_edge(
                best[1], [r[1] for r in scores]
            )
            if at_edge:
                self.log(f"tuning: {method}'s best rates {best} lie at an edge of the grid")
            report["methods"][method] = {
                "tuned": spec.tuned_lr,
                "scores": [
                    {"lr": r[0], "lr_criterion": r[1], "val_score": score}
                    for r, score in scores.items()
                ],
                "chosen": best[0],
                "chosen_lr_criterion": best[1],
                "at_edge": at_edge,
            }
        write_json_atomic(self.out_dir / "tuning.json", report)
        return chosen

    def _criterion_grid(self, tunes_criterion: bool) -> list[float | None]:
        """The criterion multipliers a method is tried with (None: the config's rate)."""
        grid = self.cfg.criterion_lr_grid
        if not tunes_criterion or tuple(grid) == (1.0,):
            return [None]
        return list(grid)

    def _run_logged(
        self, row: DataRow, method: str, seed: int, lr: float, lr_criterion: float | None = None
    ) -> RunResult:
        path = result_path(self.out_dir, row.name, method, lr, seed, lr_criterion)
        cached = path.is_file()
        started = time.perf_counter()
        result = self.run(row, method, seed, lr, lr_criterion)
        self._seen.add(path)  # finished runs count too: the position in the whole benchmark
        if not cached:
            m = result.metrics
            self.log(
                f"[{len(self._seen)}/{self._planned}] "
                f"{row.name:18s} {method:28s} seed {seed} lr {lr:.2g}"
                f"{'' if lr_criterion is None else f' / {lr_criterion:.2g}'}: "
                f"acc {m.get('classifier_accuracy', float('nan')):.3f} "
                f"kNN {m['knn_top1_dino']:.3f} MAP@R {m['mean_average_precision_at_r']:.3f} "
                f"val {result.val_score:.3f} ({time.perf_counter() - started:.0f} s)"
            )
        return result

    def run_all(self) -> list[RunResult]:
        """Tunes the learning rates, then runs every row x method x seed; returns every result
        the table uses (pretrained rows included)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.out_dir / "benchmark_config.json", asdict(self.cfg))
        chosen = self.tune_learning_rates()
        results = []
        for row in self.cfg.rows:
            results.append(self.run_pretrained(row))
            for method in self.cfg.row_methods(row):
                for seed in self.cfg.seeds:
                    results.append(self._run_logged(row, method, seed, *chosen[method]))
        return results


def _at_edge(value: float | None, grid: list[float | None]) -> bool:
    """Whether ``value`` is the smallest or largest of a grid of several distinct values."""
    values = sorted({v for v in grid if v is not None})
    return value is not None and len(values) > 1 and value in (values[0], values[-1])


__all__ = ["PRETRAINED", "Benchmark", "Rates", "RunResult", "load_result", "result_path"]
