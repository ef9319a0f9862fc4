#!/usr/bin/env bash
# Everything that needs a GPU, in one script for the lent device machine (see RESULTS.md).
# Expects: wheels of lightly, pytorch-metric-learning and faiss-cpu in .whl/ and the four
# Fashion-MNIST gz files in device_data/ (both carried, git-ignored); writes results to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
source recipes/benchmarks/device_env.sh
QUICK=${QUICK:-0}   # QUICK=1: tiny sizes, to test the script on a CPU
log() { tee -a "$OUT/gpu_check.log"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | log
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | log
DEV=cuda; [ "$QUICK" = 1 ] && DEV=cpu
if [ "$QUICK" = 1 ]; then
  python3 recipes/benchmarks/bench_loss.py --device $DEV --min-run-time 0.2 --batch 64 --classes 100 --dim 64 2>&1 | log
  python3 recipes/benchmarks/bench_step.py --device $DEV --batch 16 --iterations 2 2>&1 | log
  python3 recipes/benchmarks/bench_gpu_knn.py --device $DEV --queries 1000 --references 10000 2>&1 | log
  PRE="--pretrain-images 512 --pretrain-epochs 1"; POST="--epochs 1 --eval-train-images 1000 --eval-test-images 300"
else
  python3 recipes/benchmarks/bench_loss.py --device cuda 2>&1 | log
  python3 recipes/benchmarks/bench_step.py --device cuda --batch 256 --iterations 50 2>&1 | log
  python3 recipes/benchmarks/bench_gpu_knn.py --device cuda --queries 100000 --references 1000000 2>&1 | log
  PRE="--pretrain-images all --pretrain-epochs ${PRETRAIN_EPOCHS:-12} --pretrain-batch-size 512 --precision bf16-mixed"
  POST="--epochs 30 --eval-train-images all --eval-test-images all"
fi
DATA="--dataset fashion-mnist --data-root device_data --num-workers ${WORKERS:-14} --no-progress"
start=$(date +%s)
python3 -m lightly_grpo.cli pretrain $DATA $PRE --pretrain-out /tmp/simclr 2>&1 | grep -v Warning | tail -3 | log
echo "pretrain seconds: $(( $(date +%s) - start ))" | log
start=$(date +%s)
python3 -m lightly_grpo.cli posttrain /tmp/simclr/simclr.ckpt $DATA $POST --label-fraction 0.1 \
  --batch-size 256 --out /tmp/grpo 2>&1 | grep -v Warning | tail -25 | log
echo "posttrain + evaluation seconds: $(( $(date +%s) - start ))" | log
cp /tmp/grpo/metrics.json "$OUT/metrics.json" 2>/dev/null
cp /tmp/grpo/report.md "$OUT/report.md" 2>/dev/null
cp /tmp/grpo/figures/training_curves.png "$OUT/" 2>/dev/null
ls /tmp/grpo/figures | log
