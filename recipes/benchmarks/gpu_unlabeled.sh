#!/usr/bin/env bash
# The full-size unlabeled benchmark on one GPU: SimCLR on all 60,000 Fashion-MNIST training
# images, then GRPO-RM (neighbours, k-means) against continued SimCLR on all of them without
# labels, 3 seeds; then retrieval on unseen classes (train on classes 0-4, evaluate on 5-9).
# Expects, like gpu_check.sh: wheels of lightly, pytorch-metric-learning and faiss-cpu in .whl/
# and the four Fashion-MNIST gz files in device_data/ (both carried, git-ignored).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_unlabeled}
mkdir -p "$OUT"
source recipes/benchmarks/device_env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv 2>&1 | tee -a "$OUT/gpu_unlabeled.log"
ROOT=${DATA_ROOT:-device_data}
COMMON="--data-root $ROOT --num-workers ${WORKERS:-8} --accelerator gpu"
if [ ! -f "$OUT/simclr/simclr.ckpt" ]; then
  python3 -m lightly_grpo.cli pretrain --pretrain-out "$OUT/simclr" --pretrain-images all \
    --pretrain-epochs "${PRETRAIN_EPOCHS:-50}" --pretrain-batch-size 512 --input-size 28 \
    --no-progress $COMMON 2>&1 | tail -3 | tee -a "$OUT/gpu_unlabeled.log"
fi
python3 recipes/benchmarks/bench_unlabeled.py "$OUT/simclr/simclr.ckpt" --out "$OUT/unlabeled" \
  --seeds 0 1 2 --unlabeled-images 60000 --epochs "${EPOCHS:-5}" --batch-size 256 \
  --eval-train-images 60000 --eval-test-images 10000 $COMMON 2>&1 \
  | grep -v -i "warning\|it/s" | tee -a "$OUT/gpu_unlabeled.log"
python3 recipes/benchmarks/bench_unlabeled.py "$OUT/simclr/simclr.ckpt" \
  --out "$OUT/retrieval_unseen" --seeds 0 1 2 --train-classes 0 1 2 3 4 \
  --output-sets neighbors --baselines supcon proxy-anchor --unlabeled-images 30000 \
  --epochs "${EPOCHS:-5}" --batch-size 256 --eval-train-images 60000 \
  --eval-test-images 10000 $COMMON 2>&1 | grep -v -i "warning\|it/s" | tee -a "$OUT/gpu_unlabeled.log"
