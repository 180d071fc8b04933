# metamri: `make help` lists the targets.
PY ?= python3
STAMP := .make/installed
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export PYTHONHASHSEED ?= 0

.PHONY: help install demo test test-slow lint format bench report clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@# torch first, pinned to the CPU wheel: anything else pulls GBs of CUDA packages
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	@# fastmri (reference implementation for tests) declares torchvision, which breaks a CPU torch
	$(PY) -m pip install --quiet --no-deps fastmri==0.3.0
	@if command -v bart >/dev/null 2>&1; then echo "BART: $$(command -v bart)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq bart >/dev/null) || echo "BART could not be installed: the sigpy backends will be used"; \
	else echo "BART not found and apt-get unavailable: the sigpy backends will be used"; fi
	@mkdir -p $(dir $(STAMP)) && touch $(STAMP)

install: $(STAMP)  ## install metamri and everything it needs (torch CPU, BART when apt exists)

demo: $(STAMP)  ## the main job on the embedded phantom, on CPU: make data, inspect, train, reconstruct, score
	bash experiments/demo.sh

test: $(STAMP)  ## the default test suite (< 15 min on 2 cores)
	$(PY) -m pytest -q -n 2 --dist loadfile

test-slow: $(STAMP)  ## the slow tests only
	$(PY) -m pytest -q -m slow

lint: $(STAMP)  ## ruff
	$(PY) -m ruff check metamri tests benchmarks experiments

format: $(STAMP)  ## ruff format + import sorting
	$(PY) -m ruff check --fix --select I metamri tests benchmarks experiments
	$(PY) -m ruff format metamri tests benchmarks experiments

bench: $(STAMP)  ## benchmarks; results are written to docs/benchmarks.md
	$(PY) benchmarks/run_all.py

report: $(STAMP)  ## the study's tables, intervals and plots from committed outputs
	$(PY) -m metamri.report manifest=experiments/study/tables.yaml out_dir=experiments/study/report
	$(PY) -m metamri.report manifest=experiments/study/tables_val.yaml out_dir=experiments/study/report/val

clean:  ## remove caches, logs and generated data (not the source)
	rm -rf .pytest_cache .ruff_cache logs outputs multirun data/cache .make
	find . -name __pycache__ -prune -exec rm -rf {} +
