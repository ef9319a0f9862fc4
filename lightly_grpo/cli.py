"""The ``lightly-grpo`` command: pretrain, posttrain, evaluate, demo."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from lightly_grpo import pipeline
from lightly_grpo.pipeline import (
    DataConfig,
    EvalConfig,
    PosttrainConfig,
    PretrainConfig,
    TrainerConfig,
)

# Demo sizes measured to finish in a few minutes on a 2-core CPU (README, "Demo").
DEMO_PRETRAIN = {"epochs": 8, "max_images": 6144, "batch_size": 256}
DEMO_POSTTRAIN = {"epochs": 8, "label_fraction": 0.1, "batch_size": 128, "val_images": 2000}
DEMO_EVAL = {"max_train_images": 20000, "max_test_images": 5000}


def _optional_int(value: str) -> int | None:
    return None if value.lower() in ("none", "all") else int(value)


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset",
        default="default",
        help="'default' (Fashion-MNIST if the Debian files exist, else scikit-learn digits), "
        "'fashion-mnist', 'digits', or an ImageFolder directory",
    )
    group.add_argument("--data-root", default=None, help="Fashion-MNIST directory override")
    group.add_argument("--input-size", type=int, default=32)
    group.add_argument("--in-channels", type=int, default=1, choices=(1, 3))
    group.add_argument("--num-workers", type=int, default=0)
    group.add_argument("--seed", type=int, default=0)


def _add_trainer_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("trainer")
    group.add_argument("--accelerator", default="auto", help="Lightning accelerator")
    group.add_argument("--devices", type=int, default=1)
    group.add_argument("--precision", default="32-true", help="e.g. 32-true, bf16-mixed")
    group.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_eval_args(parser: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    group = parser.add_argument_group("evaluation")
    group.add_argument(
        "--eval-train-images",
        type=_optional_int,
        default=defaults.get("max_train_images"),
        help="train images in the kNN bank ('all' for every one)",
    )
    group.add_argument(
        "--eval-test-images",
        type=_optional_int,
        default=defaults.get("max_test_images"),
        help="test images used as queries ('all' for every one)",
    )
    group.add_argument("--eval-batch-size", type=int, default=512)


def _add_pretrain_args(parser: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    group = parser.add_argument_group("SimCLR pretraining")
    group.add_argument("--pretrain-out", default="runs/simclr")
    group.add_argument("--architecture", default="resnet18_small")
    group.add_argument("--pretrain-epochs", type=int, default=defaults.get("epochs", 10))
    group.add_argument("--pretrain-batch-size", type=int, default=defaults.get("batch_size", 256))
    group.add_argument(
        "--pretrain-images",
        type=_optional_int,
        default=defaults.get("max_images"),
        help="unlabeled train images to pretrain on ('all' for every one)",
    )
    group.add_argument("--pretrain-lr", type=float, default=1e-3)


def _add_posttrain_args(parser: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    group = parser.add_argument_group("GRPO-RM post-training")
    group.add_argument("--out", default="runs/grpo", help="run folder (report, checkpoints)")
    group.add_argument("--label-fraction", type=float, default=defaults.get("label_fraction", 0.1))
    group.add_argument("--epochs", type=int, default=defaults.get("epochs", 20))
    group.add_argument("--batch-size", type=int, default=defaults.get("batch_size", 256))
    group.add_argument("--augment", default="light", choices=("none", "light", "simclr"))
    group.add_argument("--temperature", type=float, default=0.1)
    group.add_argument("--accuracy-reward", type=float, default=1.0)
    group.add_argument("--uniformity-reward", type=float, default=1.0, help="lambda; 0 disables")
    group.add_argument("--uniformity-form", default="policy", choices=("policy", "similarity"))
    group.add_argument("--clip-eps", type=float, default=0.2)
    group.add_argument("--beta", type=float, default=0.0, help="reference KL weight")
    group.add_argument("--inner-steps", type=int, default=1)
    group.add_argument("--group-size", type=_optional_int, default=None)
    group.add_argument("--lr-backbone", type=float, default=1e-4)
    group.add_argument("--lr-prototypes", type=float, default=1e-3)
    group.add_argument("--weight-decay", type=float, default=1e-2)
    group.add_argument("--batchnorm", default="freeze", choices=("freeze", "train", "recompute"))
    group.add_argument(
        "--compile-loss", action="store_true", help="torch.compile the loss's fused math"
    )
    group.add_argument(
        "--val-images",
        type=_optional_int,
        default=defaults.get("val_images", 2000),
        help="test images for the per-epoch policy accuracy curve (0 disables, 'all')",
    )


def _data(args: argparse.Namespace) -> DataConfig:
    return DataConfig(
        dataset=args.dataset,
        data_root=args.data_root,
        input_size=args.input_size,
        in_channels=args.in_channels,
        num_workers=args.num_workers,
        seed=args.seed,
    )


def _trainer(args: argparse.Namespace) -> TrainerConfig:
    return TrainerConfig(
        accelerator=args.accelerator,
        devices=args.devices,
        precision=args.precision,
        progress=not args.no_progress,
    )


def _eval(args: argparse.Namespace) -> EvalConfig:
    return EvalConfig(
        max_train_images=args.eval_train_images,
        max_test_images=args.eval_test_images,
        batch_size=args.eval_batch_size,
    )


def _pretrain_config(args: argparse.Namespace) -> PretrainConfig:
    return PretrainConfig(
        out_dir=args.pretrain_out,
        architecture=args.architecture,
        epochs=args.pretrain_epochs,
        batch_size=args.pretrain_batch_size,
        max_images=args.pretrain_images,
        lr=args.pretrain_lr,
        data=_data(args),
        trainer=_trainer(args),
    )


def _posttrain_config(args: argparse.Namespace, checkpoint: str) -> PosttrainConfig:
    names = {f.name for f in fields(PosttrainConfig)} - {"data", "trainer", "eval"}
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    values.update(checkpoint=checkpoint, out_dir=args.out)
    return PosttrainConfig(**values, data=_data(args), trainer=_trainer(args), eval=_eval(args))


def _print_metrics(metrics: dict[str, dict[str, float]]) -> None:
    names = list(metrics)
    keys = [k for k in next(iter(metrics.values()))]
    width = max(len(k) for k in keys) + 2
    print("".ljust(width) + "".join(n[:18].rjust(20) for n in names))
    for key in keys:
        row = "".join(f"{metrics[n].get(key, float('nan')):20.4f}" for n in names)
        print(key.ljust(width) + row)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lightly-grpo`` (one sub-command per step)."""
    parser = argparse.ArgumentParser(
        prog="lightly-grpo",
        description="GRPO-RM post-training for backbones pretrained with lightly.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    pre = sub.add_parser("pretrain", help="SimCLR pretraining with lightly; writes a checkpoint")
    _add_data_args(pre)
    _add_trainer_args(pre)
    _add_pretrain_args(pre, {})

    post = sub.add_parser("posttrain", help="GRPO-RM post-training of a pretrained checkpoint")
    post.add_argument("checkpoint", help="SimCLR .ckpt, lightly recipe .ckpt or state_dict")
    post.add_argument("--architecture", default="resnet18_small")
    _add_data_args(post)
    _add_trainer_args(post)
    _add_posttrain_args(post, {})
    _add_eval_args(post, {})

    ev = sub.add_parser("evaluate", help="kNN and retrieval metrics with an HTML report")
    ev.add_argument("checkpoints", nargs="+", help="one checkpoint, or several to compare")
    ev.add_argument("--names", nargs="+", default=None, help="display names, one per checkpoint")
    ev.add_argument("--architecture", default="resnet18_small")
    ev.add_argument("--out", default="runs/eval")
    ev.add_argument("--device", default="auto")
    _add_data_args(ev)
    _add_eval_args(ev, {})

    demo = sub.add_parser(
        "demo", help="SimCLR -> GRPO-RM -> evaluation on the default data, sized for a laptop CPU"
    )
    _add_data_args(demo)
    _add_trainer_args(demo)
    _add_pretrain_args(demo, DEMO_PRETRAIN)
    _add_posttrain_args(demo, DEMO_POSTTRAIN)
    _add_eval_args(demo, DEMO_EVAL)
    demo.set_defaults(out="runs/demo")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightly-grpo`` console script."""
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    if args.command == "pretrain":
        path = pipeline.pretrain(_pretrain_config(args))
        print(f"SimCLR checkpoint: {path}")
    elif args.command == "posttrain":
        if not Path(args.checkpoint).exists():
            raise SystemExit(f"error: checkpoint {args.checkpoint!r} does not exist")
        out = pipeline.posttrain(_posttrain_config(args, args.checkpoint))
        _print_metrics(out["metrics"])
        print(f"report: {out['report']}")
    elif args.command == "evaluate":
        out = pipeline.evaluate_checkpoints(
            args.checkpoints,
            args.out,
            architecture=args.architecture,
            data=_data(args),
            cfg=_eval(args),
            names=args.names,
            device=args.device,
        )
        _print_metrics(out["metrics"])
        print(f"report: {out['report']}")
    else:
        checkpoint = pipeline.pretrain(_pretrain_config(args))
        out = pipeline.posttrain(_posttrain_config(args, str(checkpoint)))
        _print_metrics(out["metrics"])
        summary = Path(args.out) / "summary.json"
        summary.write_text(json.dumps(out["metrics"], indent=2))
        print(f"report: {out['report']}")
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
