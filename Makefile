# The two commands of the README: `make demo` (set up, run the main job) and `make test` (set up, run the tests).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.prune-gym-installed

.PHONY: setup demo test test-fast lint bench

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $(STAMP)

# The comparison demo: the LLM agent (local llama.cpp server, SmolLM2-135M-Instruct) against uniform Wanda, OWL,
# greedy-sensitivity and random-search on the agent's budget (its validation tokens) at 50% on SmolLM2-135M; every
# final model finalized with sequential calibration, scored on test windows and the out-of-domain text; report in
# runs/demo/report.md. Measured 25.1 min on 2 quiet CPU cores, 9.3 min of it the agent's episode (see README).
DEMO_SIZES := --seqlen 128 --calib-samples 16 --reward-eval-samples 4 --final-eval-samples 16 \
	--step-size 0.05 --n-levels 7 --max-steps 16 --rollback-threshold 0.25 \
	--tasks pg_factual_mc_worldcapitals,pg_wiki_ppl --eval-limit 20

demo: setup
	$(VENV)/bin/prune-gym compare --policies agent,uniform-wanda,owl,greedy-sensitivity,random-search --target 0.5 \
		--out runs/demo $(DEMO_SIZES)

lint: setup
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

bench: setup
	$(PY) scripts/bench_kernels.py
