#!/usr/bin/env bash
# The full-size quality benchmark (recipes/benchmarks/bench_quality.py --preset gpu) on one GPU.
# All of Fashion-MNIST, every method on every row, 3 seeds; SimCLR and DINO are pretrained first.
# Resumable: rerun the same command (with the same $OUT) to continue after a time limit.
# Expects, like gpu_check.sh: wheels of lightly, pytorch-metric-learning and faiss-cpu in .whl/
# and the four Fashion-MNIST gz files in device_data/ (both carried, git-ignored).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_quality}
mkdir -p "$OUT"
source recipes/benchmarks/device_env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv 2>&1 | tee -a "$OUT/gpu_quality.log"
ROOT=${DATA_ROOT:-device_data}
# BENCH_ARGS narrows the run, e.g. BENCH_ARGS="--rows fmnist-10% --seeds 0".
python3 recipes/benchmarks/bench_quality.py --preset gpu --out "$OUT/bench" \
  --data-root "$ROOT" --num-workers "${WORKERS:-8}" --accelerator gpu ${BENCH_ARGS:-} 2>&1 \
  | grep -v -i "warning\|it/s" | tee -a "$OUT/gpu_quality.log"
