"""Recipe: DINO pretraining with lightly's pieces, written out step by step like lightly's examples.

lightly's ``DINOTransform`` (two global and two local views per image), a small backbone for
28 px grayscale images (a ResNet-18 or a 4-layer ViT), and ``lightly_grpo.pretrain.DINOModule``:
lightly's ``DINOProjectionHead`` and ``DINOLoss`` with a momentum teacher. Writes
``<out>/dino.ckpt`` (teacher under ``teacher_backbone.``, student under ``backbone.``),
``<out>/backbone.pt`` (the teacher, which DINO evaluates) and ``<out>/student_backbone.pt``.

    # a one-minute CPU check
    python recipes/dino_pretrain.py --epochs 1 --images 256 --out runs/dino_check
    # a longer CPU run with the ViT at Fashion-MNIST's native 28 px
    python recipes/dino_pretrain.py --epochs 10 --images 8192 --architecture vit_small
    # every training image on a GPU
    python recipes/dino_pretrain.py --epochs 100 --images all --batch-size 512 \
        --accelerator gpu --num-workers 8

The same method runs in the chain as ``lightly-grpo pretrain --method dino``; this script
spells out what that chain does for DINO.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytorch_lightning as pl

from lightly_grpo.backbones import backbone_output_dim, build_backbone, export_backbone
from lightly_grpo.data import make_loader, resolve_dataset, subset
from lightly_grpo.pretrain import DINOModule, dino_transform

ARCHITECTURES = ("resnet18_small", "vit_small")


def _images(value: str) -> int | None:
    # "all" keeps every training image; otherwise a positive count.
    if value == "all":
        return None
    count = int(value)
    if count < 1:
        raise argparse.ArgumentTypeError(f"--images must be >= 1 or 'all', got {value!r}")
    return count


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=1, help="training epochs")
    parser.add_argument(
        "--images", type=_images, default=2048, help="training images, or 'all' (60,000)"
    )
    parser.add_argument(
        "--input-size", type=int, default=28, help="side of the global views in pixels"
    )
    parser.add_argument("--architecture", choices=ARCHITECTURES, default="resnet18_small")
    parser.add_argument("--out", type=Path, default=Path("runs/dino"), help="output folder")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    parser.add_argument(
        "--dataset", default="fashion-mnist", help="fashion-mnist, digits or an image folder"
    )
    parser.add_argument("--accelerator", default="auto", help="Lightning accelerator")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pl.seed_everything(args.seed, workers=True)

    # Views: 2 global crops of --input-size px and 2 local crops of half that (at least 8 px).
    transform = dino_transform(args.input_size, in_channels=1)
    dataset = subset(resolve_dataset(args.dataset, "train", transform), args.images, args.seed)
    loader = make_loader(
        dataset,
        batch_size=min(args.batch_size, len(dataset)),  # type: ignore[arg-type]
        shuffle=True,
        drop_last=True,
        num_workers=args.num_workers,
        seed=args.seed,
    )

    # Student backbone; DINOModule copies it into the momentum teacher.
    backbone = build_backbone(args.architecture, in_channels=1)
    feature_dim = backbone_output_dim(backbone, (1, args.input_size, args.input_size))
    model = DINOModule(backbone, feature_dim=feature_dim, lr=args.lr)

    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator=args.accelerator,
        devices=1,
        default_root_dir=args.out,
        log_every_n_steps=1,
    )
    trainer.fit(model, loader)

    args.out.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(args.out / "dino.ckpt")
    teacher = export_backbone(model.teacher_backbone, args.out / "backbone.pt")
    student = export_backbone(model.backbone, args.out / "student_backbone.pt")
    print(f"teacher backbone: {teacher}\nstudent backbone: {student}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
