# make demo : install, synthesise the embedded corpus, train a small model on CPU, evaluate it
# make test : install, lint (ruff, yamllint on hparams/), run the test suite
# make bench: install, run every benchmark and write bench/RESULTS.md
# make gpu-check: install, measure training and inference on the GPU within a budget, write bench/RESULTS-gpu.md
PYTHON_SYSTEM ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: install test demo bench gpu-check clean-demo

$(INSTALLED): requirements.txt
	$(PYTHON_SYSTEM) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt
	touch $(INSTALLED)

install: $(INSTALLED)

demo: $(INSTALLED)
	$(PYTHON) -m demo

test: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/yamllint --strict hparams/
	$(PYTHON) -m pytest -q -n 2 --dist loadgroup

bench: $(INSTALLED)
	$(PYTHON) -m bench.run_all

GPU_BUDGET_S ?= 420
gpu-check: $(INSTALLED)
	$(PYTHON) -m bench.gpu_check --device cuda --budget-s $(GPU_BUDGET_S)
