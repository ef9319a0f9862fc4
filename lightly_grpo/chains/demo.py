"""The demo chain: pretraining, then post-training of its checkpoint with the report."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from lightly_grpo.chains.config import DEMO_OVERLAY, DemoConfig, PosttrainConfig
from lightly_grpo.chains.evaluate import RunOutputs
from lightly_grpo.chains.flags import merge_config
from lightly_grpo.chains.posttrain import posttrain
from lightly_grpo.chains.pretrain import pretrain


def demo_config() -> DemoConfig:
    """The demo's defaults: :class:`DemoConfig` with the :data:`DEMO_OVERLAY` sizes.

    Examples:
        >>> demo_config().posttrain.out_dir
        'runs/demo'
    """
    return merge_config(DemoConfig(), DEMO_OVERLAY)


def demo(cfg: DemoConfig) -> RunOutputs:
    """Pretrains, post-trains the new checkpoint, evaluates and writes ``summary.json``; with
    ``unlabeled_images > 0`` also post-trains the checkpoint without labels (neighbour output
    set, against continued SimCLR) into ``<out>/unlabeled`` (``summary.json`` gets both).

    Examples:
        >>> outputs = demo(demo_config())  # doctest: +SKIP
    """
    checkpoint = pretrain(cfg.pretrain)
    labeled = dataclasses.replace(cfg.posttrain, checkpoint=str(checkpoint))
    outputs = posttrain(labeled)
    summary: dict[str, object] = {"labeled": outputs.metrics}
    if cfg.unlabeled_images > 0:
        unlabeled_cfg = unlabeled_demo_config(labeled, cfg.unlabeled_images)
        if cfg.pretrain.method != "simclr":  # continuing SimCLR needs a SimCLR checkpoint
            unlabeled_cfg = dataclasses.replace(unlabeled_cfg, baselines=[])
        unlabeled = posttrain(unlabeled_cfg)
        summary["unlabeled"] = unlabeled.metrics
        print(f"unlabeled report: {unlabeled.report}")
    (Path(cfg.posttrain.out_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
    return outputs


def unlabeled_demo_config(labeled: PosttrainConfig, images: int) -> PosttrainConfig:
    """The demo's unlabeled run: the labeled run's checkpoint, data and trainer settings, one
    epoch of neighbour-mined batches over ``images`` train images, labels for evaluation only.

    Examples:
        >>> cfg = unlabeled_demo_config(demo_config().posttrain, 1024)
        >>> cfg.output_set, cfg.out_dir, cfg.baselines
        ('neighbors', 'runs/demo/unlabeled', ['simclr'])
    """
    return dataclasses.replace(
        labeled,
        out_dir=str(Path(labeled.out_dir) / "unlabeled"),
        output_set="neighbors",
        unlabeled=dataclasses.replace(labeled.unlabeled, images=images),
        epochs=1,
        baselines=["simclr"],
        eval=dataclasses.replace(labeled.eval, max_train_images=2000, max_test_images=1000),
    )


__all__ = ["demo", "demo_config", "unlabeled_demo_config"]
