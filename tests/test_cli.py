"""End-to-end: the `lightly-grpo` sub-commands on scikit-learn's digits, sized to run in seconds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from lightly_grpo.cli import build_parser, main

SMALL = ["--dataset", "digits", "--input-size", "16", "--no-progress", "--accelerator", "cpu"]
SMALL_EVAL = ["--eval-train-images", "600", "--eval-test-images", "200"]
TINY_EVAL = ["--eval-train-images", "300", "--eval-test-images", "120", "--eval-batch-size", "300"]


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


@pytest.mark.parametrize("output_set", ["neighbors", "kmeans"])
def test_unlabeled_posttrain_writes_a_report_with_clustering_metrics(
    pretrained: Path, tmp_path: Path, output_set: str
) -> None:
    out = tmp_path / output_set
    args = ["posttrain", str(pretrained / "simclr.ckpt"), *SMALL, *TINY_EVAL, "--out", str(out)]
    args += ["--output-set", output_set, "--unlabeled-images", "96", "--epochs", "1"]
    args += ["--batch-size", "32", "--num-neighbors", "5"]
    if output_set == "neighbors":
        args += ["--baselines", "simclr", "--refresh-every", "1", "--epochs", "2"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    expected = {"Pretrained backbone", "GRPO-RM"}
    if output_set == "neighbors":
        expected.add("continued SimCLR")
    assert set(metrics) == expected
    for model in metrics.values():
        for key in ("cluster_acc", "nmi", "ari", "neighbor_purity", "knn_top1_lightly"):
            assert 0.0 <= model[key] <= 1.0, key
        assert "classifier_accuracy" not in model  # nothing trained on labels
    assert ("policy_cluster_acc" in metrics["GRPO-RM"]) == (output_set == "kmeans")
    run = json.loads((out / "config.json").read_text())["run"]
    assert run["unlabeled_images"] == 96 and run["steps"] > 0
    assert (out / "report.html").is_file() and (out / "grpo.ckpt").is_file()
    # The trained output set is in the checkpoint: a neighbour table / centroids.
    state = torch.load(out / "grpo.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    key = "neighbors" if output_set == "neighbors" else "centroids"
    table = state[f"criterion.output_set.{key}"]
    assert table.shape[0] == (96 if output_set == "neighbors" else 10)
    if output_set == "neighbors":
        assert int(table.min()) >= 0  # initialised from the pretrained bank


def test_unlabeled_posttrain_rejects_labeled_baselines(pretrained: Path, tmp_path: Path) -> None:
    args = ["posttrain", str(pretrained / "simclr.ckpt"), *SMALL, "--out", str(tmp_path / "x")]
    with pytest.raises(ValueError, match="ce-linear"):
        main([*args, "--output-set", "neighbors", "--baselines", "ce-linear"])
    assert not (tmp_path / "x" / "grpo.ckpt").exists()


def test_retrieval_mode_trains_on_some_classes_and_evaluates_the_others(
    pretrained: Path, tmp_path: Path
) -> None:
    out = tmp_path / "retrieval"
    args = ["posttrain", str(pretrained / "simclr.ckpt"), *SMALL, *TINY_EVAL, "--out", str(out)]
    args += ["--output-set", "neighbors", "--train-classes", "0", "1", "2", "3", "4"]
    args += ["--unlabeled-images", "96", "--epochs", "1", "--batch-size", "32"]
    assert main([*args, "--num-neighbors", "5", "--baselines", "supcon"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert set(metrics) == {"Pretrained backbone", "supcon", "GRPO-RM"}
    for model in metrics.values():
        assert 0.0 <= model["mean_average_precision_at_r"] <= 1.0
    # Evaluated on the unseen classes only: per-class results name classes 5..9.
    per_class = json.loads((out / "metrics.json").read_text())["per_class"]["GRPO-RM"]
    classes = {int(c) for values in per_class.values() for c in values}
    assert classes == {5, 6, 7, 8, 9}
    from lightly_grpo.chains import PosttrainConfig
    from lightly_grpo.chains.config import NeighborsConfig, UnlabeledConfig
    from lightly_grpo.chains.recipes import unlabeled_items
    from lightly_grpo.data import DataConfig, dataset_labels

    cfg = PosttrainConfig(
        neighbors=NeighborsConfig(train_classes=[0, 1, 2, 3, 4]),
        unlabeled=UnlabeledConfig(images=96),
        data=DataConfig(dataset="digits"),
    )
    _, bank, _ = unlabeled_items(cfg)
    assert set(dataset_labels(bank).tolist()) <= {0, 1, 2, 3, 4}
    kmeans = ["posttrain", str(pretrained / "simclr.ckpt"), *SMALL, "--out", str(tmp_path / "k")]
    with pytest.raises(ValueError, match="needs --output-set neighbors"):
        main([*kmeans, "--output-set", "kmeans", "--train-classes", "0", "1"])


def test_unlabeled_checks_fail_before_training(pretrained: Path, tmp_path: Path) -> None:
    # Continuing SimCLR needs a SimCLR checkpoint's projection head; a bare backbone has none.
    backbone = str(pretrained / "backbone.pt")
    args = [
        "posttrain",
        backbone,
        *SMALL,
        "--out",
        str(tmp_path / "x"),
        "--output-set",
        "neighbors",
    ]
    with pytest.raises(ValueError, match="projection head"):
        main([*args, "--baselines", "simclr"])
    assert not (tmp_path / "x" / "grpo.ckpt").exists()
