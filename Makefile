# One-command set-up on a fresh machine with nothing but Python.
#   make run    create .venv, install torch + gradloop, train configs/quickstart.yaml
#   make test   same set-up plus dev extras, then the whole test suite, in parallel (pytest-xdist;
#               PYTEST_ARGS="-n 0 tests/x.py" runs one file in one process)
#   make test-fast  the tests that start no server and need no PostgreSQL (markers in pyproject.toml)
#   make lint / make typecheck   ruff (check + format --check) / mypy, configured in pyproject.toml
# TORCH picks the torch build installed first (the CPU build on this disk by default), so the
# project's own torch range never pulls a multi-GB CUDA build: make run TORCH=torch==2.5.1
# TORCH_DEV is the build `make test` installs: torchvision must match torch exactly, and the
# pair on this disk is a CUDA build (runs on the CPU), so only the test venv pays for it.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
TORCH_DEV ?= torch==2.14.1 torchvision==0.29.1
CONFIG ?= configs/quickstart.yaml
BIN    := $(VENV)/bin

.PHONY: setup setup-dev run test test-fast lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.torch: | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)"
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.torch-dev: | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH_DEV)
	touch $@ $(VENV)/.torch

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.torch-dev
	$(BIN)/pip install --quiet -e ".[dev,vision,text]"
	touch $@ $(VENV)/.installed

setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed-dev

run: setup
	$(BIN)/gradloop run $(CONFIG)

test: setup-dev
	GRADLOOP_REQUIRE_EXTRAS=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup-dev
	$(BIN)/python -m pytest -m "not server and not postgres and not slow" $(PYTEST_ARGS)

lint: setup-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy reads the installed names through a link tree (see [tool.mypy] in pyproject.toml), made
# afresh each time so that new modules are in it; its report names the repository's own files.
TYPECHECK_TREE := build/typecheck/gradloop
typecheck: setup-dev
	rm -rf build/typecheck && mkdir -p $(TYPECHECK_TREE)
	for entry in service/*; do ln -s "$(CURDIR)/$$entry" $(TYPECHECK_TREE)/; done
	ln -s "$(CURDIR)/plugins" $(TYPECHECK_TREE)/plugins
	$(BIN)/mypy > build/typecheck/report.txt; status=$$?; \
	  sed -e 's#^$(TYPECHECK_TREE)/plugins/#plugins/#' -e 's#^$(TYPECHECK_TREE)/#service/#' build/typecheck/report.txt; \
	  exit $$status

bench: setup-dev
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/tracking.py --pairs 5 --ab hold
	$(BIN)/python bench/tracking_switch.py
	$(BIN)/python bench/api.py
	$(BIN)/python bench/distributed.py
	$(BIN)/python bench/workloads.py --threads 1

clean:
	rm -rf $(VENV) build runs mlruns mlflow.db gradloop-state *.egg-info .mypy_cache .ruff_cache
