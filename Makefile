# One-command set-up on a fresh machine with nothing but Python.
#   make run    create .venv, install torch + gradloop, train configs/quickstart.yaml
#   make test   same set-up plus dev extras, then the whole test suite
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

.PHONY: setup setup-dev run test bench clean

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
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: setup-dev
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/tracking.py --pairs 5 --ab ring,hold
	$(BIN)/python bench/tracking_switch.py
	$(BIN)/python bench/api.py

clean:
	rm -rf $(VENV) runs mlruns mlflow.db gradloop-state *.egg-info
