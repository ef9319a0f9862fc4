"""Recipe: GRPO-RM without labels, neighbour output set, after SimCLR pretraining.

Spelled out step by step (what ``lightly-grpo posttrain --output-set neighbors`` does):

1. load the SimCLR backbone (``load_backbone`` reads lightly / Lightning checkpoints);
2. embed every training image once with it (eval transform) and build the neighbour table of the
   ``NeighborOutputSet``: each image's 20 nearest neighbours in the frozen pretrained space;
3. train on two SimCLR views per image, on batches from ``NeighborBatchSampler`` (half of every
   batch is one table neighbour of the other half) whose items carry their dataset index
   (``IndexedDataset``); the other view of an image is the correct output (reward 1), its
   neighbours are rewarded 0.5, every other candidate of the batch is penalised by -10 pi_old;
4. optionally rebuild the table from the current model every few epochs (``OutputSetRefresh``);
5. export the backbone.

No label is read for training. Example (a few minutes on a 2-core CPU):

    python recipes/simclr_pretrain.py --out runs/simclr            # or lightly-grpo pretrain
    python recipes/unlabeled_neighbors.py runs/simclr/simclr.ckpt --images 4000 --epochs 1
    lightly-grpo evaluate runs/simclr/simclr.ckpt runs/unlabeled_neighbors/backbone.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Subset

from lightly_grpo.backbones import backbone_output_dim, export_backbone, load_backbone
from lightly_grpo.data import IndexedDataset, NeighborBatchSampler, random_subset, resolve_dataset
from lightly_grpo.data.transforms import eval_transform, simclr_transform
from lightly_grpo.losses import GRPORMPolicyLoss
from lightly_grpo.output_sets import NeighborOutputSet, OutputSetRefresh, embed_bank
from lightly_grpo.rewards import neighbor_reward
from lightly_grpo.stage import GRPORMStage


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="SimCLR checkpoint (or backbone.pt)")
    parser.add_argument("--out", type=Path, default=Path("runs/unlabeled_neighbors"))
    parser.add_argument("--dataset", default="default", help="fashion-mnist, digits, ImageFolder")
    parser.add_argument("--images", type=int, default=None, help="train images (default all)")
    parser.add_argument("--input-size", type=int, default=28)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--refresh-every", type=int, default=0, help="epochs; 0 never")
    parser.add_argument("--accelerator", default="auto")
    args = parser.parse_args()
    pl.seed_everything(0, workers=True)

    # 1. The pretrained backbone.
    backbone = load_backbone(args.checkpoint, "resnet18_small")
    dim = backbone_output_dim(backbone, (1, args.input_size, args.input_size))

    # The same images twice: one eval view for the bank, two SimCLR views for training.
    plain = resolve_dataset(args.dataset, "train", eval_transform(args.input_size, 1))
    indices = random_subset(len(plain), args.images, seed=0).tolist()
    bank_images = Subset(plain, indices)
    views = resolve_dataset(args.dataset, "train", simclr_transform(args.input_size, 1))
    train_images = IndexedDataset(Subset(views, indices))  # items: (views, label, index)

    # 2. The output set, its neighbour table from the frozen pretrained model, and the stage.
    output_set = NeighborOutputSet(num_items=len(indices), embedding_size=dim, num_neighbors=20)
    criterion = GRPORMPolicyLoss(
        output_set,
        temperature=0.1,
        reward=neighbor_reward(instance=1.0, neighbor=0.5, uniformity=10.0),
    )
    stage = GRPORMStage(backbone, criterion=criterion, lr_backbone=1e-4)
    output_set.initialize(embed_bank(stage, bank_images, batch_size=512, progress=True))

    # 3. Neighbour-mined batches of two views.
    sampler = NeighborBatchSampler(output_set.neighbors, batch_size=args.batch_size, seed=0)
    loader = DataLoader(train_images, batch_sampler=sampler)

    # 4. Train (and refresh the table from the current model, if asked).
    callbacks = [OutputSetRefresh(bank_images, args.refresh_every)] if args.refresh_every else []
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator=args.accelerator,
        devices=1,
        default_root_dir=args.out,
        callbacks=callbacks,
        log_every_n_steps=5,
    )
    trainer.fit(stage, loader)

    # 5. The post-trained backbone, for `lightly-grpo evaluate` or your own code.
    print(f"backbone: {export_backbone(stage.backbone, args.out / 'backbone.pt')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
