"""The demo chain: pretraining, then post-training of its checkpoint with the report."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from lightly_grpo.chains.config import DEMO_OVERLAY, DemoConfig
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
    """Pretrains, post-trains the new checkpoint, evaluates and writes ``summary.json``.

    Examples:
        >>> outputs = demo(demo_config())  # doctest: +SKIP
    """
    checkpoint = pretrain(cfg.pretrain)
    outputs = posttrain(dataclasses.replace(cfg.posttrain, checkpoint=str(checkpoint)))
    summary = Path(cfg.posttrain.out_dir) / "summary.json"
    summary.write_text(json.dumps(outputs.metrics, indent=2))
    return outputs


__all__ = ["demo", "demo_config"]
