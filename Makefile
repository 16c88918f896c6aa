# The two commands of the README: `make demo` (set up, run the main job) and `make test` (set up, run the tests).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.prune-gym-installed

.PHONY: setup demo test test-fast lint bench

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $(STAMP)

demo: setup
	$(VENV)/bin/prune-gym prune --model smollm2-135m --method sparsegpt --sparsity 0.5

lint: setup
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

bench: setup
	$(PY) scripts/bench_kernels.py
