"""Recipe: GRPO-RM without labels, k-means output set, after SimCLR pretraining.

Spelled out step by step (what ``lightly-grpo posttrain --output-set kmeans`` does):

1. load the SimCLR backbone;
2. embed every training image with it and run spherical k-means (FAISS when installed): the K
   centroids are the outputs the policy chooses among;
3. train on two SimCLR views per image: the correct output of a view is the cluster of the
   *other* view, under Sinkhorn-balanced assignments (as in SwAV), so the policy cannot collapse
   onto a few clusters; every other centroid is penalised by -pi_old;
4. re-run k-means on the current embeddings every few epochs (``OutputSetRefresh``);
5. export the backbone; the policy's argmax is a clustering of the images.

No label is read for training. Example:

    python recipes/unlabeled_kmeans.py runs/simclr/simclr.ckpt --images 4000 --clusters 10
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytorch_lightning as pl
from torch.utils.data import Subset

from lightly_grpo.backbones import backbone_output_dim, export_backbone, load_backbone
from lightly_grpo.data import make_loader, random_subset, resolve_dataset
from lightly_grpo.data.transforms import eval_transform, simclr_transform
from lightly_grpo.losses import GRPORMPolicyLoss
from lightly_grpo.output_sets import KMeansPrototypes, OutputSetRefresh, embed_bank
from lightly_grpo.rewards import AccuracyReward, UniformityReward
from lightly_grpo.stage import GRPORMStage


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="SimCLR checkpoint (or backbone.pt)")
    parser.add_argument("--out", type=Path, default=Path("runs/unlabeled_kmeans"))
    parser.add_argument("--dataset", default="default", help="fashion-mnist, digits, ImageFolder")
    parser.add_argument("--images", type=int, default=None, help="train images (default all)")
    parser.add_argument("--clusters", type=int, default=10)
    parser.add_argument("--input-size", type=int, default=28)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--refresh-every", type=int, default=1, help="epochs; 0 never")
    parser.add_argument("--accelerator", default="auto")
    args = parser.parse_args()
    pl.seed_everything(0, workers=True)

    # 1. The pretrained backbone.
    backbone = load_backbone(args.checkpoint, "resnet18_small")
    dim = backbone_output_dim(backbone, (1, args.input_size, args.input_size))

    # The same images with one eval view (k-means) and two SimCLR views (training).
    plain = resolve_dataset(args.dataset, "train", eval_transform(args.input_size, 1))
    indices = random_subset(len(plain), args.images, seed=0).tolist()
    bank_images = Subset(plain, indices)
    views = resolve_dataset(args.dataset, "train", simclr_transform(args.input_size, 1))
    loader = make_loader(Subset(views, indices), args.batch_size, shuffle=True, drop_last=True)

    # 2. k-means centroids of the pretrained embeddings as the output set.
    output_set = KMeansPrototypes(num_clusters=args.clusters, embedding_size=dim)
    reward = AccuracyReward(1.0) + UniformityReward(1.0, form="policy")
    stage = GRPORMStage(backbone, criterion=GRPORMPolicyLoss(output_set, reward=reward))
    output_set.initialize(embed_bank(stage, bank_images, batch_size=512, progress=True))
    output_set.snapshot_reference()

    # 3./4. Train on swapped, balanced assignments; re-cluster every few epochs.
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

    # 5. The backbone, and how the final policy clusters the images.
    sizes = output_set.cluster_sizes(embed_bank(stage, bank_images, batch_size=512))
    print(f"images per cluster: {sizes.tolist()}")
    print(f"backbone: {export_backbone(stage.backbone, args.out / 'backbone.pt')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
