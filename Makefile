# Two entry points for a fresh machine:
#   make run    create .venv if missing, then run the default study (snakemake --cores all)
#   make test   create .venv if missing, then run the test suite
# Variables: make run STUDY=smoke CORES=2 runs config/studies/smoke.yaml on 2 cores (defaults: STUDY=quick,
# CORES=all); PYTEST_ARGS="-k status" passes arguments to pytest; TORCH_SPEC picks the torch wheel.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU wheel by default; on a GPU machine install your CUDA torch==2.13.0 into .venv first, or set TORCH_SPEC.
TORCH_SPEC ?= torch==2.13.0+cpu
STUDY ?= quick
CORES ?= all

.PHONY: run test lint install clean-venv

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/.installed

run: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES) --config study=$(STUDY)

test: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean-venv:
	rm -rf $(VENV)
