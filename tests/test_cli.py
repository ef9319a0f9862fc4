"""End-to-end: the `lightly-grpo` sub-commands on scikit-learn's digits, sized to run in seconds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lightly_grpo.cli import build_parser, main

SMALL = ["--dataset", "digits", "--input-size", "16", "--no-progress", "--accelerator", "cpu"]
SMALL_EVAL = ["--eval-train-images", "600", "--eval-test-images", "200"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("simclr")
    args = ["pretrain", *SMALL, "--pretrain-out", str(out), "--pretrain-epochs", "1"]
    assert main([*args, "--pretrain-images", "256", "--pretrain-batch-size", "128"]) == 0
    return out


def _printed_config(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert main([*argv, "--print-config"]) == 0
    return dict(json.loads(capsys.readouterr().out))


def test_pretrain_writes_checkpoint_and_backbone(
    pretrained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (pretrained / "simclr.ckpt").is_file()
    assert (pretrained / "backbone.pt").is_file()
    saved = json.loads((pretrained / "config.json").read_text())
    assert saved["epochs"] == 1 and saved["method"] == "simclr"
    # the run's config.json is a --config file that reproduces the run
    assert (
        _printed_config(["pretrain", "--config", str(pretrained / "config.json")], capsys) == saved
    )


def test_posttrain_and_evaluate_write_reports(
    pretrained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "grpo"
    args = ["posttrain", str(pretrained / "simclr.ckpt"), *SMALL, *SMALL_EVAL, "--out", str(out)]
    args += ["--epochs", "1", "--label-fraction", "0.2", "--batch-size", "64"]
    assert main([*args, "--baselines", "ce-linear"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert set(metrics) == {"Pretrained backbone", "GRPO-RM", "ce-linear"}
    # each model's own classifier is scored; the plain backbone has none
    assert "classifier_accuracy" not in metrics["Pretrained backbone"]
    for name in ("GRPO-RM", "ce-linear"):
        assert 0.0 <= metrics[name]["classifier_accuracy"] <= 1.0
    for model in metrics.values():
        for key in ("knn_top1_dino", "knn_top1_lightly", "mean_average_precision_at_r"):
            assert 0.0 <= model[key] <= 1.0, key
        assert model["ncm_accuracy"] > 0.1  # digits has 10 classes
    assert (out / "report.html").is_file() and (out / "grpo.ckpt").is_file()
    saved = json.loads((out / "config.json").read_text())
    assert saved.pop("run")["labeled_images"] > 0  # facts of the run, skipped by --config
    assert _printed_config(["posttrain", "--config", str(out / "config.json")], capsys) == saved

    compare = tmp_path / "eval"
    checkpoints = [str(pretrained / "simclr.ckpt"), str(out / "backbone.pt")]
    args = ["evaluate", *checkpoints, "--names", "simclr", "grpo", "--out", str(compare)]
    assert main([*args, "--dataset", "digits", "--input-size", "16", *SMALL_EVAL]) == 0
    evaluated = json.loads((compare / "metrics.json").read_text())["metrics"]
    assert set(evaluated) == {"simclr", "grpo"}
    # the same backbone evaluated twice on the same split gives the same numbers
    for key in ("knn_top1_dino", "mean_average_precision_at_r"):
        assert evaluated["grpo"][key] == pytest.approx(metrics["GRPO-RM"][key], abs=1e-6)
    assert json.loads((compare / "config.json").read_text())["names"] == ["simclr", "grpo"]


def test_an_unknown_baseline_fails_before_any_training(pretrained: Path, tmp_path: Path) -> None:
    args = ["posttrain", str(pretrained / "simclr.ckpt"), *SMALL, "--out", str(tmp_path / "x")]
    with pytest.raises((ValueError, SystemExit), match="bogus"):
        main([*args, "--baselines", "ce-linear", "bogus"])
    assert not (tmp_path / "x" / "grpo.ckpt").exists()


def test_bad_paths_give_clear_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(SystemExit, match="nope.ckpt"):
        main(["posttrain", str(missing), *SMALL])
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        main(["evaluate", str(missing), "--dataset", str(tmp_path / "no_such_dir")])


def test_parser_has_the_four_commands() -> None:
    parser = build_parser()
    for command in ("pretrain", "posttrain", "evaluate", "demo"):
        assert parser.parse_args(
            [command] + (["x.ckpt"] if command in ("posttrain", "evaluate") else [])
        )
    demo = parser.parse_args(["demo"])
    assert demo.out == "runs/demo" and demo.pretrain_images is not None
