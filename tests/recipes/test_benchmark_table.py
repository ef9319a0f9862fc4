"""The generated table: mean ± std over seeds, marks only beyond the spread, convergence."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchlib import CPU_PRESET, RunResult
from benchlib.table import (
    Cell,
    aggregate,
    benchmark_markdown,
    convergence_plot,
    epochs_to_fraction,
    markdown_table,
)


def _run(method: str, seed: int, knn: float, acc: float, curve: list[float]) -> RunResult:
    return RunResult(
        row="digits",
        method=method,
        seed=seed,
        lr=1e-4,
        metrics={"knn_top1_dino": knn, "classifier_accuracy": acc},
        history=[{"epoch": i + 1.0, "val/accuracy": v} for i, v in enumerate(curve)],
        train_seconds=10.0,
    )


def test_epochs_to_95_percent_of_the_final_accuracy() -> None:
    assert epochs_to_fraction([0.2, 0.5, 0.9, 0.95, 1.0]) == 4.0
    assert epochs_to_fraction([0.96, 0.1, 0.97, 1.0]) == 1.0  # the first time it gets there
    assert epochs_to_fraction([0.5]) == 1.0
    assert math.isnan(epochs_to_fraction([math.nan]))


def test_cells_mark_a_difference_only_beyond_both_spreads() -> None:
    a, b = Cell.of([0.80, 0.82, 0.84]), Cell.of([0.70, 0.71, 0.72])
    assert a.mean == pytest.approx(0.82) and a.std == pytest.approx(0.02) and a.count == 3
    assert a.differs_from(b) == 1 and b.differs_from(a) == -1
    close = Cell.of([0.81, 0.83, 0.79])
    assert a.differs_from(close) == 0
    assert Cell.of([math.nan]).count == 0 and Cell.of([0.5]).std == 0.0


def test_markdown_marks_against_cross_entropy_and_bolds_the_best() -> None:
    results = [
        *[_run("ce-linear", s, 0.80 + 0.01 * s, 0.7, [0.5, 0.7]) for s in range(3)],
        *[_run("grpo-uniformity", s, 0.90 + 0.01 * s, 0.7, [0.69, 0.7]) for s in range(3)],
        *[_run("supcon", s, 0.70 + 0.01 * s, math.nan, []) for s in range(3)],
    ]
    table = aggregate(results, "digits")
    assert table["grpo-uniformity"]["epochs_to_95"].mean == 1.0
    assert table["ce-linear"]["epochs_to_95"].mean == 2.0
    text = markdown_table(table, [("knn_top1_dino", "kNN"), ("epochs_to_95", "epochs")])
    lines = {line.split("|")[1].strip(): line for line in text.splitlines()[2:]}
    assert "**0.910 ± 0.010** ▲" in lines["grpo-uniformity"]
    assert "0.710 ± 0.010 ▼" in lines["supcon"]
    assert "▲" not in lines["ce-linear"] and "▼" not in lines["ce-linear"]
    # Fewer epochs is better: GRPO-RM converging in 1 epoch against 2 is an improvement.
    assert lines["grpo-uniformity"].rstrip(" |").endswith("**1.0 ± 0.0** ▲")
    assert "| supcon | – |" in lines["supcon"] and lines["supcon"].count("–") >= 2


def test_the_whole_section_and_the_plot_are_written(tmp_path: Path) -> None:
    cfg = CPU_PRESET.select(rows=["digits"], methods=["ce-linear", "grpo-kl"], seeds=[0, 1])
    results = [
        _run(m, s, 0.8, 0.7, [0.6, 0.7, 0.72]) for m in ("ce-linear", "grpo-kl") for s in (0, 1)
    ]
    text = benchmark_markdown(cfg, results, {"ce-linear": 1e-4, "grpo-kl": 3e-4})
    assert "### digits" in text and "| grpo-kl | 0.0003 |" in text
    path = convergence_plot(cfg, results, tmp_path / "convergence.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_variants_follow_the_registered_methods_in_the_table() -> None:
    variant = "grpo-uniformity@uniformity=3"
    results = [_run(m, 0, 0.8, 0.7, [0.7]) for m in (variant, "ce-linear", "grpo-kl")]
    text = markdown_table(aggregate(results, "digits"), [("knn_top1_dino", "kNN")])
    names = [line.split("|")[1].strip() for line in text.splitlines()[2:]]
    assert names == ["ce-linear", "grpo-kl", variant]
