# Sourced by the GPU scripts: installs the carried wheels (lightly, pytorch-metric-learning,
# faiss-cpu in .whl/, git-ignored) into /tmp/site, which the device machine lacks. A faiss-gpu
# wheel is left out: it installs the same `faiss` package as faiss-cpu, and only
# gpu_index_proof.sh installs it, into its own folder, once it has been seen to find a GPU.
if [ -d .whl ] && [ "${SKIP_WHEELS:-0}" != 1 ]; then
  wheels=()
  for w in .whl/*.whl; do case "$(basename "$w")" in faiss_gpu*) ;; *) wheels+=("$w") ;; esac; done
  if [ ${#wheels[@]} -gt 0 ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "${wheels[@]}" || exit 1
  fi
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
