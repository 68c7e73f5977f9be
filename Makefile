# Two entry points for a fresh machine:
#   make run    create .venv if missing, then run the default study (snakemake --cores all)
#   make test   create .venv if missing, then run the test suite
# Variables: make run STUDY=smoke CORES=2 runs config/studies/smoke.yaml on 2 cores (defaults: STUDY=quick,
# CORES=all); PYTEST_ARGS="-k status" passes arguments to pytest; TEST_WORKERS=0 runs the tests in this process
# (default 2: pytest-xdist workers, each test single-threaded); TORCH_SPEC picks the torch wheel.
# And one for a GPU machine, with the Python that has its CUDA torch (no .venv needed; README, "GPUs and clusters"):
#   make gpu-check   benchmarks/gpu_check.py: CUDA checks and throughput in GPU_BUDGET_S seconds
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU wheel by default; on a GPU machine install your CUDA torch==2.13.0 into .venv first, or set TORCH_SPEC.
TORCH_SPEC ?= torch==2.13.0+cpu
STUDY ?= quick
CORES ?= all
TEST_WORKERS ?= 2

# The GPU check runs with .venv's Python if there is one, else with python3 (a GPU node set up from local wheels).
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
GPU_BUDGET_S ?= 480

.PHONY: run test lint install clean-venv gpu-check

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
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

gpu-check:
	MUJOCO_GL=$${MUJOCO_GL:-disable} PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" \
		$(GPU_PYTHON) benchmarks/gpu_check.py --budget-s $(GPU_BUDGET_S)

clean-venv:
	rm -rf $(VENV)
