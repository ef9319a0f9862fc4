"""Unlabeled GRPO-RM against continuing SimCLR, and retrieval on unseen classes, over seeds.

Unlabeled (default): for every seed, runs ``lightly-grpo posttrain --output-set neighbors
--baselines simclr`` and ``--output-set kmeans`` from one SimCLR checkpoint (no labels trained
on), then prints (and writes to ``--out``) a markdown table of mean ± std: test kNN top-1, MAP@R,
P@1, clustering ACC / NMI / ARI of k-means on the test embeddings (the pretrained row is the
"k-means on pretrained embeddings" baseline), the k-means policy's own clustering ACC, and
neighbour purity.

Retrieval on unseen classes (``--train-classes 0 1 2 3 4``): GRPO-RM's retrieval mode and the
labeled baselines (``--baselines supcon proxy-anchor``) train on the same images of those
classes, and MAP@R, P@1 and Recall@K are measured on the other classes.

    python recipes/benchmarks/bench_unlabeled.py runs/simclr/simclr.ckpt --seeds 0 1 2 \\
        --unlabeled-images 2000 --epochs 1 --batch-size 128
    python recipes/benchmarks/bench_unlabeled.py runs/simclr/simclr.ckpt --seeds 0 1 2 \\
        --train-classes 0 1 2 3 4 --output-sets neighbors --baselines supcon proxy-anchor \\
        --unlabeled-images 2000 --epochs 2 --out runs/bench_retrieval_unseen
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from lightly_grpo.chains import PosttrainConfig
from lightly_grpo.chains.config import EvalConfig, NeighborsConfig, UnlabeledConfig
from lightly_grpo.chains.posttrain import posttrain
from lightly_grpo.data import DataConfig

RETRIEVAL_COLUMNS = {
    "mean_average_precision_at_r": "MAP@R",
    "precision_at_1": "P@1",
    "recall_at_1": "R@1",
    "recall_at_2": "R@2",
    "recall_at_4": "R@4",
    "recall_at_8": "R@8",
    "knn_top1_dino": "kNN top-1 (k=20)",
}
COLUMNS = {
    "knn_top1_dino": "kNN top-1 (k=20)",
    "mean_average_precision_at_r": "MAP@R",
    "precision_at_1": "P@1",
    "cluster_acc": "k-means ACC",
    "nmi": "NMI",
    "ari": "ARI",
    "policy_cluster_acc": "policy ACC",
    "neighbor_purity": "nbr purity",
}


def run(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    table: dict[str, dict[str, list[float]]] = {}
    for seed in args.seeds:
        for output_set in args.output_sets:
            cfg = PosttrainConfig(
                checkpoint=args.checkpoint,
                out_dir=str(args.out / f"{output_set}_seed{seed}"),
                output_set=output_set,
                unlabeled=UnlabeledConfig(images=args.unlabeled_images),
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr_backbone=args.lr,
                baselines=args.baselines if output_set == args.output_sets[0] else [],
                uniformity_reward=args.uniformity,
                neighbors=NeighborsConfig(
                    neighbor_reward=args.neighbor_reward, train_classes=args.train_classes
                ),
                data=DataConfig(
                    data_root=args.data_root,
                    input_size=args.input_size,
                    num_workers=args.num_workers,
                    seed=seed,
                    data_seed=0,
                ),
                eval=EvalConfig(
                    max_train_images=args.eval_train_images,
                    max_test_images=args.eval_test_images,
                ),
            )
            cfg.trainer.progress = False
            cfg.trainer.accelerator = args.accelerator
            outputs = posttrain(cfg)
            for name, result in outputs.results.items():
                values = result.metrics
                row = "GRPO-RM " + output_set if name == "GRPO-RM" else name
                if name != "GRPO-RM" and output_set != args.output_sets[0]:
                    continue  # the pretrained and SimCLR rows come from the first run
                cells = table.setdefault(row, {})
                for key in args.columns:
                    if key in values:
                        cells.setdefault(key, []).append(values[key])
            print(f"seed {seed} {output_set}: done", file=sys.stderr, flush=True)
    return table


def markdown(table: dict[str, dict[str, list[float]]], columns: dict[str, str]) -> str:
    lines = ["| model | " + " | ".join(columns.values()) + " |"]
    lines.append("|---" * (len(columns) + 1) + "|")
    for row, cells in table.items():
        parts = []
        for key in columns:
            values = cells.get(key, [])
            if not values:
                parts.append("–")
            elif len(values) == 1:
                parts.append(f"{values[0]:.3f}")
            else:
                parts.append(f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}")
        lines.append(f"| {row} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_unlabeled"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output-sets", nargs="+", default=["neighbors", "kmeans"])
    parser.add_argument("--unlabeled-images", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--input-size", type=int, default=28)
    parser.add_argument("--eval-train-images", type=int, default=5000)
    parser.add_argument("--eval-test-images", type=int, default=2000)
    parser.add_argument("--baselines", nargs="*", default=["simclr"])
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--train-classes", type=int, nargs="+", default=None)
    parser.add_argument("--uniformity", type=float, default=None, help="default per output set")
    parser.add_argument("--neighbor-reward", type=float, default=0.5)
    args = parser.parse_args()
    args.columns = COLUMNS if args.train_classes is None else RETRIEVAL_COLUMNS
    table = run(args)
    text = markdown(table, args.columns)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(text + "\n")
    (args.out / "results.json").write_text(json.dumps(table, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
