#!/usr/bin/env bash
# GPU search proof for the lent device machine (H100/H200 with torch + numpy): FAISS-GPU,
# torch-GPU and CPU search agree; exact-search throughput against the torch.mm floor.
# Expects the wheels of lightly, pytorch-metric-learning, faiss-cpu (and, for the FAISS GPU
# backends, a faiss-gpu wheel with its CUDA library wheels) in .whl/ (carried, git-ignored).
# Writes gpu_index_proof.log, results.json and results.md to $OUT.
#   QUICK=1 bash recipes/benchmarks/gpu_index_proof.sh   # tiny sizes on the CPU, to test it
set -uo pipefail
OUT=${OUT:-/tmp/gpu_index_proof}
QUICK=${QUICK:-0}
mkdir -p "$OUT"
: > "$OUT/gpu_index_proof.log"
log() { tee -a "$OUT/gpu_index_proof.log"; }
# The project's venv where there is one (this repository's machine); the device has python3.
PY=${PYTHON:-python3}
[ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

if [ -d .whl ] && [ "${SKIP_WHEELS:-0}" != 1 ]; then
  # faiss-cpu and faiss-gpu both install the package `faiss`: the GPU build goes into its own
  # folder, placed first on the path only once it has been seen to load and find a GPU.
  others=()
  for w in .whl/*.whl; do case "$(basename "$w")" in faiss_gpu*) ;; *) others+=("$w") ;; esac; done
  if [ ${#others[@]} -gt 0 ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "${others[@]}" 2>&1 | log
    export PYTHONPATH=/tmp/site:$PYTHONPATH
  fi
  gpu_wheel=$(ls .whl/faiss_gpu*.whl 2>/dev/null | head -1)
  if [ -n "$gpu_wheel" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site_faiss_gpu "$gpu_wheel" 2>&1 | log
    if PYTHONPATH=/tmp/site_faiss_gpu:$PYTHONPATH $PY -c \
      "import faiss, sys; n = faiss.get_num_gpus(); print('faiss', faiss.__version__, 'GPUs', n); sys.exit(n == 0)" \
      2>&1 | log; then
      export PYTHONPATH=/tmp/site_faiss_gpu:$PYTHONPATH
      echo "using the faiss-gpu wheel $gpu_wheel" | log
    else
      echo "faiss-gpu wheel $gpu_wheel did not load or sees no GPU: continuing without it" | log
    fi
  else
    echo "no faiss-gpu wheel in .whl/: FAISS GPU backends skipped (torch GPU and CPU only)" | log
  fi
else
  echo "no .whl/ (or SKIP_WHEELS=1): using the installed packages" | log
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | log
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | log

if [ "$QUICK" = 1 ]; then
  ARGS=(--device cpu --dim 32 --check-queries 500 --check-references 5000
        --time-queries 1000 --time-references 20000 --floor-chunk 256)
else
  ARGS=()
fi
$PY recipes/benchmarks/gpu_index_proof.py --out "$OUT" "${ARGS[@]}" "$@" 2>&1 | log
status=${PIPESTATUS[0]}
echo "gpu_index_proof.py exit status: $status" | log
exit "$status"
