"""Does GRPO-RM pay off? GRPO-RM's variants against the baselines a user would pick instead.

Every method post-trains the same pretrained backbone on the same labeled images with the same
augmentation, epochs, batch size, AdamW parameter groups and cosine schedule; only the objective
differs. Each method's learning rate is tuned on validation images held out of the train split
(never trained on, never tested on): the rates of ``--lr-grid`` times the default are tried on
the first row with the first seed, and the one with the best validation score (own classifier
accuracy, or kNN top-1 against the labeled images for SupCon) is used everywhere. Test metrics
use one fixed set of test images for every method and seed.

The run is resumable: every finished run is a JSON file under ``OUT/runs``; rerunning the same
command skips them. Missing SimCLR / DINO checkpoints are pretrained into ``OUT/pretrain``.

Usage:
    python recipes/benchmarks/bench_quality.py --preset cpu --out runs/bench_cpu
    python recipes/benchmarks/bench_quality.py --preset gpu --out runs/bench_gpu  # one GPU
    python recipes/benchmarks/bench_quality.py --rows digits --methods ce-linear grpo-kl --seeds 0
    # a sweep of one setting at a fixed learning rate (method variants: <method>@<setting>=<v>)
    python recipes/benchmarks/bench_quality.py --rows fmnist-10% --lr-grid 1 \
        --methods grpo-uniformity@uniformity=3,lr_backbone=3e-4
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from benchlib import PRESETS, run_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--out", default="runs/bench_quality")
    parser.add_argument("--rows", nargs="+", help="row names (default: all of the preset)")
    parser.add_argument("--methods", nargs="+", help="method names (default: all of the preset)")
    parser.add_argument("--seeds", nargs="+", type=int, help="training seeds (default: 0 1 2)")
    parser.add_argument("--simclr-checkpoint", help="backbone.pt / .ckpt to start from")
    parser.add_argument("--dino-checkpoint", help="backbone.pt / .ckpt to start from")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument(
        "--lr-grid",
        nargs="+",
        type=float,
        help="multipliers of each method's learning rate to tune over (1 turns tuning off)",
    )
    parser.add_argument(
        "--criterion-lr-grid",
        nargs="+",
        type=float,
        help="multipliers of the criterion's learning rate (prototypes, head, proxies) tried "
        "with each of --lr-grid: a two-dimensional grid (default: 1, not tuned)",
    )
    parser.add_argument(
        "--epochs", type=int, help="training epochs of every selected row (default: the preset's)"
    )
    parser.add_argument(
        "--val-images", type=int, help="held-out validation images (default: the preset's)"
    )
    parser.add_argument("--data-root", help="Fashion-MNIST folder (default: Debian's)")
    parser.add_argument("--num-workers", type=int, default=0, help="training loader workers")
    args = parser.parse_args()
    cfg = PRESETS[args.preset].select(args.rows, args.methods, args.seeds)
    cfg = dataclasses.replace(cfg, data_root=args.data_root, num_workers=args.num_workers)
    if args.lr_grid:
        cfg = dataclasses.replace(cfg, lr_grid=tuple(args.lr_grid))
    if args.val_images is not None:
        cfg = dataclasses.replace(cfg, val_images=args.val_images)
    if args.criterion_lr_grid:
        cfg = dataclasses.replace(cfg, criterion_lr_grid=tuple(args.criterion_lr_grid))
    if args.epochs is not None:
        if args.epochs < 1:
            parser.error(f"--epochs must be >= 1, got {args.epochs}")
        rows = tuple(dataclasses.replace(row, epochs=args.epochs) for row in cfg.rows)
        cfg = dataclasses.replace(cfg, rows=rows)
    checkpoints = {
        source: path
        for source, path in (("simclr", args.simclr_checkpoint), ("dino", args.dino_checkpoint))
        if path
    }
    started = time.perf_counter()
    path = run_benchmark(cfg, args.out, checkpoints, args.accelerator)
    print(path.read_text())
    print(f"wrote {path} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
