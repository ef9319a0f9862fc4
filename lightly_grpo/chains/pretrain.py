"""The pretraining chain: a registered self-supervised method (SimCLR by default) on unlabeled
train images, writing the checkpoint that post-training starts from."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from lightly_grpo.backbones import backbone_output_dim, build_backbone, export_backbone
from lightly_grpo.chains.config import PretrainConfig
from lightly_grpo.chains.runtime import make_trainer, prepare_run, save_final_checkpoint
from lightly_grpo.data import check_training_data, make_loader, resolve_dataset, subset
from lightly_grpo.pretrain import get_pretrain_method


def pretrain(cfg: PretrainConfig) -> Path:
    """Pretrains a backbone and writes ``simclr.ckpt``, ``backbone.pt`` and ``config.json``.

    Examples:
        >>> path = pretrain(PretrainConfig(out_dir="runs/simclr"))  # doctest: +SKIP

    Returns:
        The path of the Lightning checkpoint (the backbone under the method's prefix,
        ``backbone.`` for SimCLR). The file keeps the name ``simclr.ckpt`` for every method, so
        scripts that chain the steps do not depend on the method.
    """
    out_dir = prepare_run(cfg.out_dir, cfg.data.seed)
    data = cfg.data
    method = get_pretrain_method(cfg.method)
    transform = method.transform(data.input_size, data.in_channels)
    dataset = subset(
        resolve_dataset(data.dataset, "train", transform, root=data.data_root, seed=data.data_seed),
        cfg.max_images,
        data.data_seed,
    )
    check_training_data(dataset, 1, drop_last=True, name="pretraining set")
    batch_size = min(cfg.batch_size, len(dataset))  # type: ignore[arg-type]
    loader = make_loader(
        dataset,
        batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=data.num_workers,
        seed=data.seed,
    )
    backbone = build_backbone(cfg.architecture, data.in_channels)
    feature_dim = backbone_output_dim(
        backbone, (data.in_channels, data.input_size, data.input_size)
    )
    # Only the settings the method's module takes (a method without a temperature ignores it).
    settings = {"lr": cfg.lr, "temperature": cfg.temperature}
    known = method.hyperparameters()
    module = method.build_module(
        backbone, feature_dim, **{k: v for k, v in settings.items() if k in known}
    )
    trainer = make_trainer(cfg.trainer, out_dir, cfg.epochs)
    trainer.fit(module, loader)
    path = out_dir / "simclr.ckpt"
    save_final_checkpoint(trainer, path)  # collective under DDP
    if trainer.is_global_zero:  # every rank holds the same weights; rank 0 writes
        export_backbone(method.backbone(module), out_dir / "backbone.pt")
        (out_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    return path


__all__ = ["pretrain"]
