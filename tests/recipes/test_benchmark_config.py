"""Benchmark configurations: presets, subsets and the checks on bad settings."""

from __future__ import annotations

import dataclasses

import pytest

from benchlib import CPU_PRESET, GPU_PRESET, PRESETS, BenchmarkConfig, DataRow
from lightly_grpo.methods import METHODS


def test_presets_cover_the_rows_the_benchmark_reports() -> None:
    rows = {row.name for cfg in PRESETS.values() for row in cfg.rows}
    assert {"fmnist-10%", "fmnist-100%", "fmnist-long-tail", "fmnist-10%-dino", "digits"} <= rows
    assert {row.name for row in GPU_PRESET.rows} == rows  # the GPU preset runs all of them
    main = CPU_PRESET.rows[0]
    assert CPU_PRESET.row_methods(main) == tuple(METHODS)  # the whole ablation on the main row
    assert set(main.shifts) == {"rotation", "noise", "blur", "rotation+noise"}
    assert len(CPU_PRESET.seeds) >= 3 and CPU_PRESET.tuning_row is main


def test_select_keeps_a_subset_and_rejects_unknown_names() -> None:
    cfg = CPU_PRESET.select(rows=["digits", "fmnist-10%"], methods=["supcon", "grpo-kl"])
    assert [r.name for r in cfg.rows] == ["digits", "fmnist-10%"]
    assert all(cfg.row_methods(row) == ("supcon", "grpo-kl") for row in cfg.rows)
    with pytest.raises(ValueError, match=r"unknown row\(s\) \['cifar'\]"):
        CPU_PRESET.select(rows=["cifar"])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"rows": ()}, "at least one row"),
        ({"methods": ("adam",)}, "Unknown method 'adam'"),
        ({"seeds": ()}, "at least one seed"),
        ({"lr_grid": (1.0, 0.0)}, "positive multipliers"),
        ({"tune_row": "nope"}, "tune_row 'nope'"),
    ],
)
def test_bad_benchmark_settings_name_the_value(change: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(CPU_PRESET, **change)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"backbone": "moco"}, "backbone must be one of"),
        ({"label_fraction": 0.0}, r"label_fraction must be in \(0, 1\], got 0.0"),
        ({"imbalance_ratio": 0.5}, "imbalance_ratio must be >= 1, got 0.5"),
        ({"epochs": 0}, "epochs and batch_size"),
        ({"methods": ("byol",)}, "Unknown method 'byol'"),
    ],
)
def test_bad_rows_name_the_value(change: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DataRow("row", **change)  # type: ignore[arg-type]


def test_duplicate_row_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="unique"):
        BenchmarkConfig(rows=(DataRow("a"), DataRow("a")))
