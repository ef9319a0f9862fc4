"""The generated command line and the config merge: every flag and default of the hand-written
parser it replaced, ``--config`` / ``--print-config`` round trips, checked errors. No training."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from lightly_grpo.chains import DemoConfig, PosttrainConfig, PretrainConfig, merge_config
from lightly_grpo.chains.flags import collect_flags, load_config_file, overrides_from_args
from lightly_grpo.cli import COMMANDS, build_parser, main

DATA: dict[str, Any] = {"dataset": "default", "data_root": None, "input_size": 32, "in_channels": 1}
DATA |= {"num_workers": 0, "seed": 0}
TRAINER: dict[str, Any] = {
    "accelerator": "auto",
    "devices": "1",  # a string since --devices takes what Lightning takes ("auto", "0,1")
    "precision": "32-true",
    "progress": True,
}
EVAL: dict[str, Any] = {"eval_train_images": None, "eval_test_images": None, "eval_batch_size": 512}
PRETRAIN: dict[str, Any] = {"pretrain_out": "runs/simclr", "architecture": "resnet18_small"}
PRETRAIN |= {"pretrain_epochs": 10, "pretrain_batch_size": 256, "pretrain_images": None}
PRETRAIN |= {"pretrain_lr": 0.001}
POSTTRAIN: dict[str, Any] = {
    "out": "runs/grpo",
    "label_fraction": 0.1,
    "epochs": 20,
    "batch_size": 256,
    "augment": "light",
    "temperature": 0.1,
    "accuracy_reward": 1.0,
    "uniformity_reward": None,  # resolves to 1.0 for the class output set (below)
    "uniformity_form": "policy",
    "clip_eps": 0.2,
    "beta": 0.0,
    "inner_steps": 1,
    "group_size": None,
    "lr_backbone": 0.0001,
    "lr_criterion": 0.001,
    "warmup_steps": 0,
    "weight_decay": 0.01,
    "batchnorm": "freeze",
    "compile_loss": False,
    "val_images": 2000,
}
# The namespaces of the hand-written parser this one replaces, per command (``--no-progress``
# stored ``no_progress=False``; the generated ``--progress/--no-progress`` stores progress=True).
OLD_DEFAULTS: dict[str, dict[str, Any]] = {
    "pretrain": DATA | TRAINER | PRETRAIN,
    "posttrain": DATA | TRAINER | POSTTRAIN | EVAL | {"architecture": "resnet18_small"},
    "evaluate": DATA
    | EVAL
    | {"names": None, "architecture": "resnet18_small"}
    | {"out": "runs/eval", "device": "auto"},
    "demo": DATA
    | TRAINER
    | PRETRAIN
    | POSTTRAIN
    | EVAL
    # the demo's sizes (re-sized to fit 10 minutes with set-up on the slower 2-core CPU)
    | {"pretrain_epochs": 3, "pretrain_images": 3072, "out": "runs/demo", "epochs": 3}
    | {"batch_size": 128, "eval_train_images": 5000, "eval_test_images": 3000}
    | {"val_images": 500, "input_size": 28, "label_fraction": 0.05, "baselines": ["ce-linear"]},
}
POSITIONAL = {"posttrain": ["x.ckpt"], "evaluate": ["x.ckpt"], "pretrain": [], "demo": []}


@pytest.mark.parametrize("command", sorted(OLD_DEFAULTS))
def test_every_old_flag_keeps_its_default(command: str) -> None:
    args = vars(build_parser().parse_args([command, *POSITIONAL[command]]))
    for dest, default in OLD_DEFAULTS[command].items():
        assert args[dest] == default, (command, dest)


def test_the_uniformity_default_depends_on_the_output_set() -> None:
    from lightly_grpo.chains.config import PosttrainConfig
    from lightly_grpo.chains.recipes import output_set_recipe

    def uniformity_weight(cfg: PosttrainConfig) -> float:
        return output_set_recipe(cfg.output_set).uniformity(cfg)

    assert uniformity_weight(PosttrainConfig()) == 1.0  # the labeled default is unchanged
    assert uniformity_weight(PosttrainConfig(output_set="kmeans")) == 1.0
    assert uniformity_weight(PosttrainConfig(output_set="neighbors")) == 10.0
    assert uniformity_weight(PosttrainConfig(output_set="neighbors", uniformity_reward=0.0)) == 0.0


def test_the_lr_prototypes_flag_of_0_2_sets_lr_criterion() -> None:
    args = build_parser().parse_args(["posttrain", "c.ckpt", "--lr-prototypes", "0.01"])
    assert args.lr_criterion == 0.01


def test_old_flag_spellings_parse() -> None:
    argv = ["posttrain", "c.ckpt", "--no-progress", "--group-size", "none", "--compile-loss"]
    argv += ["--eval-train-images", "all", "--val-images", "0", "--in-channels", "3"]
    args = build_parser().parse_args(argv)
    assert (args.progress, args.group_size, args.compile_loss) == (False, None, True)
    assert (args.eval_train_images, args.val_images, args.in_channels) == (None, 0, 3)
    names = build_parser().parse_args(["evaluate", "a", "b", "--names", "x", "y"])
    assert names.checkpoints == ["a", "b"] and names.names == ["x", "y"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["posttrain", "c.ckpt", "--augment", "heavy"])


def test_shared_flags_set_both_steps_of_the_demo(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--architecture", "resnet18_small_cifar", "--dataset", "digits"]
    assert main([*argv, "--epochs", "2", "--pretrain-epochs", "3", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    for step in ("pretrain", "posttrain"):
        assert printed[step]["architecture"] == "resnet18_small_cifar"
        assert printed[step]["data"]["dataset"] == "digits"
    assert (printed["pretrain"]["epochs"], printed["posttrain"]["epochs"]) == (3, 2)
    # the demo post-trains its own checkpoint: no positional argument for it
    assert "checkpoint" not in {f.dest for f in COMMANDS["demo"].flags}


def test_print_config_round_trips_and_flags_override_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["posttrain", "a.ckpt", "--epochs", "3", "--seed", "5", "--print-config"]
    assert main(argv) == 0
    saved = tmp_path / "config.json"
    saved.write_text(capsys.readouterr().out)
    assert main(["posttrain", "--config", str(saved), "--print-config"]) == 0
    loaded = json.loads(capsys.readouterr().out)
    assert loaded == json.loads(saved.read_text())
    assert (loaded["checkpoint"], loaded["epochs"], loaded["data"]["seed"]) == ("a.ckpt", 3, 5)
    # a flag equal to the built-in default still overrides the file
    argv = ["posttrain", "--config", str(saved), "--epochs", "20", "b.ckpt", "--print-config"]
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["epochs"], again["checkpoint"], again["data"]["seed"]) == (20, "b.ckpt", 5)


def test_run_facts_in_a_config_json_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"epochs": 4, "run": {"labeled_images": 100}}))
    assert merge_config(PosttrainConfig(), load_config_file(path)).epochs == 4


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"epoch": 3}, "unknown setting 'epoch'"),
        ({"data": {"sed": 1}}, "unknown setting 'data.sed'"),
        ({"epochs": "3"}, "epochs must be int"),
        ({"epochs": True}, "epochs must be an integer"),
        ({"augment": "heavy"}, "augment must be one of"),
        ({"data": {"in_channels": 2}}, "in_channels must be 1 or 3"),
        ({"data": 3}, "data must be a JSON object"),
    ],
)
def test_bad_settings_are_named(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        merge_config(PosttrainConfig(), settings)


def test_bad_config_files_exit_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"pretrain": {"epoch": 1}}))
    with pytest.raises(SystemExit):
        main(["demo", "--config", str(path), "--print-config"])
    assert "pretrain.epoch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pretrain", "--config", str(tmp_path / "missing.json")])
    assert "missing.json" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="at least one checkpoint"):
        main(["evaluate"])


def test_ints_load_as_floats_and_merge_leaves_the_input_alone() -> None:
    base = PretrainConfig()
    merged = merge_config(base, {"lr": 1, "max_images": None})
    assert isinstance(merged.lr, float) and merged.lr == 1.0
    assert base.lr == 1e-3


def test_overrides_cover_every_path_of_a_shared_flag() -> None:
    flags = collect_flags(DemoConfig, exclude=("posttrain.checkpoint",))
    overrides = overrides_from_args(argparse.Namespace(seed=7), flags)
    assert overrides == {"pretrain": {"data": {"seed": 7}}, "posttrain": {"data": {"seed": 7}}}
