# Sourced by the GPU scripts: installs the carried wheels (lightly, pytorch-metric-learning,
# faiss-cpu in .whl/, git-ignored) into /tmp/site, which the device machine lacks.
if [ -d .whl ] && [ "${SKIP_WHEELS:-0}" != 1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
