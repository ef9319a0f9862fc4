"""Recipe: GRPO-RM post-training of a SimCLR checkpoint, then evaluation (steps 2 and 3).

Loads the checkpoint, initialises one prototype per class from the class means of a class-balanced
labeled share of the train split, post-trains with ``GRPORMStage`` and writes a report comparing the
pretrained backbone with the post-trained one (kNN top-1 at k=20/T=0.07 and k=200/T=0.1, MAP@R, P@1,
each model's own classifier accuracy and the nearest-class-mean accuracy), plus any baselines
trained beside it (``--baselines ce-linear supcon``).

    # CPU demo size
    python recipes/grpo_posttrain.py runs/simclr/simclr.ckpt --label-fraction 0.05 --epochs 6 \
        --eval-train-images 10000 --eval-test-images 2000
    # the reference setting of docs/method.md: 10% of the labels, full splits, GPU
    python recipes/grpo_posttrain.py runs/simclr/simclr.ckpt --label-fraction 0.1 --epochs 30 \
        --accelerator gpu --num-workers 12 --eval-train-images all --eval-test-images all
    # rerun a finished run's settings, changing one
    python recipes/grpo_posttrain.py --config runs/grpo/config.json --beta 0.01 --out runs/beta

Every flag is a field of ``lightly_grpo.chains.PosttrainConfig`` (``--help`` lists them,
``--print-config`` prints the resolved settings as JSON).
"""

from __future__ import annotations

import sys

from lightly_grpo.cli import main

if __name__ == "__main__":
    sys.exit(main(["posttrain", *sys.argv[1:]]))
