"""Recipe: SimCLR pretraining with lightly's pieces (step 1 of the chain).

lightly's ``SimCLRTransform`` (two views), a torchvision ResNet-18 adapted to small grayscale
images, lightly's ``SimCLRProjectionHead`` and ``NTXentLoss`` in a Lightning module
(``lightly_grpo.pretrain.simclr.SimCLRModule``). Writes ``<out>/simclr.ckpt`` (backbone under
``backbone.``) and ``<out>/backbone.pt``.

    # 5-minute CPU run
    python recipes/simclr_pretrain.py --pretrain-epochs 8 --pretrain-images 4096
    # hours-long GPU run on all 60,000 Fashion-MNIST training images
    python recipes/simclr_pretrain.py --pretrain-epochs 200 --pretrain-images all \
        --pretrain-batch-size 512 --accelerator gpu --num-workers 12 --precision bf16-mixed

Every flag is a field of ``lightly_grpo.chains.PretrainConfig``; ``--method`` picks a method of
``lightly_grpo.pretrain`` (SimCLR by default), ``--config runs/simclr/config.json`` reruns a run.
"""

from __future__ import annotations

import sys

from lightly_grpo.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
