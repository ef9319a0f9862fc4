# Two commands do all the set-up on a fresh machine:
#   make demo   -> SimCLR pretraining -> GRPO-RM post-training -> evaluation report (runs/demo)
#   make test   -> lint, type check and the test suite
# Both create .venv with the pinned versions (constraints.txt) when it is missing.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup data chromium demo test lint bench bench-quality clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt lightly_grpo/_tiled_topk.cpp
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[faiss-cpu,dev]"
	touch $(STAMP)

# Fashion-MNIST from Debian (root only); without it the code falls back to scikit-learn's digits.
data:
	@if [ ! -f $(FASHION_MNIST) ] && [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		(apt-get install -y -q dataset-fashion-mnist || \
		 (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) >/dev/null \
		|| echo "dataset-fashion-mnist not installed: falling back to scikit-learn digits"; \
	fi

# Headless Chromium for the report-rendering test (root only; the test is skipped without it).
chromium:
	@if ! command -v chromium >/dev/null && [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		(apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium)) \
		>/dev/null 2>&1 || echo "chromium not installed: the report-rendering test will be skipped"; \
	fi

demo: setup data
	$(VENV)/bin/lightly-grpo demo

lint: setup
	$(VENV)/bin/ruff check lightly_grpo tests recipes
	$(VENV)/bin/ruff format --check lightly_grpo tests recipes
	$(VENV)/bin/mypy lightly_grpo

test: setup data chromium lint
	$(PY) -m pytest -q

bench: setup data
	$(PY) recipes/benchmarks/bench_loss.py
	$(PY) recipes/benchmarks/bench_retrieval.py
	$(PY) recipes/benchmarks/bench_knn_graph.py

# Does GRPO-RM pay off? Every method x data row x 3 seeds, under an hour on 2 cores; resumable.
bench-quality: setup data
	$(PY) recipes/benchmarks/bench_quality.py --preset cpu --out runs/bench_quality

clean:
	rm -rf runs lightning_logs .pytest_cache .mypy_cache .ruff_cache
