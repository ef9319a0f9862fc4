"""The ``lightly-grpo`` command: pretrain, posttrain, evaluate, demo, info.

Each sub-command but ``info`` runs one chain of :mod:`lightly_grpo.chains` over its config
dataclass, and its flags are generated from that dataclass (:mod:`lightly_grpo.chains.flags`). A
config resolves as dataclass defaults < the command's overlay (the demo's sizes) < ``--config
FILE.json`` (a run folder's ``config.json`` or a ``--print-config`` output) < the flags given.
``info`` prints the versions, devices and kNN search backends of this installation
(:mod:`lightly_grpo.info`; ``--json`` for a JSON object).

Examples:
    >>> args = build_parser().parse_args(["posttrain", "x.ckpt", "--epochs", "3"])
    >>> args.checkpoint, args.epochs, args.label_fraction
    ('x.ckpt', 3, 0.1)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lightly_grpo.chains import (
    DemoConfig,
    EvaluateConfig,
    PosttrainConfig,
    PretrainConfig,
    RunOutputs,
    demo,
    demo_config,
    evaluate_run,
    posttrain,
    pretrain,
)
from lightly_grpo.chains.flags import (
    Flag,
    add_flags,
    collect_flags,
    load_config_file,
    merge_config,
    overrides_from_args,
)
from lightly_grpo.distributed import is_global_zero
from lightly_grpo.info import print_info

# Help-group titles of the config sections (the demo nests the steps' sections).
_TITLES = {
    "data": "data",
    "trainer": "trainer",
    "eval": "evaluation",
    "pretrain": "pretraining",
    "pretrain.data": "data",
    "pretrain.trainer": "trainer",
    "posttrain": "GRPO-RM post-training",
    "posttrain.eval": "evaluation",
}


def _print_metrics(metrics: dict[str, dict[str, float]]) -> None:
    names = list(metrics)
    # Every model's metrics: a plain backbone has no classifier_accuracy, a trained model has.
    keys = list(dict.fromkeys(key for values in metrics.values() for key in values))
    width = max(len(k) for k in keys) + 2
    column = max(20, *(len(n) + 2 for n in names))
    print("".ljust(width) + "".join(n.rjust(column) for n in names))
    for key in keys:
        cells = [metrics[n].get(key) for n in names]
        row = "".join("–".rjust(column) if v is None else f"{v:{column}.4f}" for v in cells)
        print(key.ljust(width) + row)


def _print_outputs(outputs: RunOutputs) -> None:
    if not is_global_zero():
        return  # under DDP rank 0 evaluates and reports
    if outputs.results:
        _print_metrics(outputs.metrics)
    print(f"report: {outputs.report}")


def _run_pretrain(cfg: PretrainConfig) -> None:
    print(f"pretrained checkpoint: {pretrain(cfg)}")


def _run_posttrain(cfg: PosttrainConfig) -> None:
    if not Path(cfg.checkpoint).exists():
        raise SystemExit(f"error: checkpoint {cfg.checkpoint!r} does not exist")
    _print_outputs(posttrain(cfg))


def _run_evaluate(cfg: EvaluateConfig) -> None:
    if not cfg.checkpoints:
        raise SystemExit("error: evaluate needs at least one checkpoint (or a --config with some)")
    _print_outputs(evaluate_run(cfg))


def _run_demo(cfg: DemoConfig) -> None:
    _print_outputs(demo(cfg))


@dataclass(frozen=True)
class Command:
    """A sub-command: its config type, defaults and chain.

    Attributes:
        name: The sub-command.
        help: One line for ``lightly-grpo --help``.
        defaults: The config before ``--config`` and flags.
        run: Runs the chain on the resolved config.
        exclude: Config fields kept off this command's flags (set by the chain itself).
    """

    name: str
    help: str
    defaults: Callable[[], Any]
    run: Callable[[Any], None]
    exclude: tuple[str, ...] = field(default=())

    @property
    def flags(self) -> list[Flag]:
        return collect_flags(type(self.defaults()), self.exclude)


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command(
            "pretrain",
            "self-supervised pretraining with lightly (SimCLR); writes a checkpoint",
            PretrainConfig,
            _run_pretrain,
        ),
        Command(
            "posttrain",
            "GRPO-RM post-training of a pretrained checkpoint",
            PosttrainConfig,
            _run_posttrain,
        ),
        Command(
            "evaluate",
            "kNN and retrieval metrics with an HTML report",
            EvaluateConfig,
            _run_evaluate,
        ),
        Command(
            "demo",
            "pretraining -> GRPO-RM -> evaluation on the default data, sized for a laptop CPU",
            demo_config,
            _run_demo,
            exclude=("posttrain.checkpoint",),  # the demo post-trains its own checkpoint
        ),
    )
}


# Not a chain: a plain sub-command next to the generated ones.
INFO_COMMAND = "info"
_INFO_HELP = (
    "print versions, devices and the kNN search backends (which one 'auto' picks, whether the "
    "compiled tiled kernel is present, FAISS's build)"
)


def build_parser(explicit_only: bool = False) -> argparse.ArgumentParser:
    """The argument parser of ``lightly-grpo`` (one sub-command per chain, and ``info``).

    Args:
        explicit_only: Leave flags that were not given out of the parsed namespace (instead of
            filling in defaults), to apply them over a ``--config`` file.
    """
    parser = argparse.ArgumentParser(
        prog="lightly-grpo",
        description="GRPO-RM post-training for backbones pretrained with lightly.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        child = sub.add_parser(
            command.name,
            help=command.help,
            description=command.help,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        child.add_argument(
            "--config",
            metavar="FILE.json",
            default=argparse.SUPPRESS if explicit_only else None,
            help="load settings from a JSON file (a run's config.json); flags override it",
        )
        child.add_argument(
            "--print-config",
            action="store_true",
            default=argparse.SUPPRESS if explicit_only else False,
            help="print the resolved config as JSON and exit",
        )
        add_flags(
            child,
            command.flags,
            command.defaults(),
            {"": command.help, **_TITLES},
            explicit_only,
        )
    info = sub.add_parser(INFO_COMMAND, help=_INFO_HELP, description=_INFO_HELP)
    info.add_argument("--json", action="store_true", help="print the information as JSON")
    return parser


def resolve_config(command: Command, explicit: argparse.Namespace) -> Any:
    """The command's config: defaults, then ``explicit.config``'s file, then the given flags.

    Raises:
        ValueError: For an unknown setting or a bad value in the file.
        FileNotFoundError: For a missing config file.
    """
    config = command.defaults()
    path = getattr(explicit, "config", None)
    if path is not None:
        config = merge_config(config, load_config_file(path))
    return merge_config(config, overrides_from_args(explicit, command.flags))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightly-grpo`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == INFO_COMMAND:
        print_info(args.json)
        return 0
    command = COMMANDS[args.command]
    try:
        config = resolve_config(command, build_parser(explicit_only=True).parse_args(argv))
    except (ValueError, FileNotFoundError) as error:
        parser.error(f"{command.name}: {error}")
    if args.print_config:
        print(json.dumps(asdict(config), indent=2))
        return 0
    started = time.perf_counter()
    command.run(config)
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
