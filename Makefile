# The two set-up commands of the README: `make demo` (main job on the synthetic default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export DS_ACCELERATOR ?= cpu

.PHONY: install demo test lint

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# CPU wheel from pip's find-links first, so nothing below pulls a multi-GB CUDA build.
	$(PY) -m pip install "torch==2.13.0"
	$(PY) -m pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/raysys pipeline --config jobs/configs/quickstart.yaml --out runs/quickstart

test: install
	$(PY) -m pytest tests

lint: install
	$(VENV)/bin/ruff check raysys jobs tests
	$(VENV)/bin/ruff format --check raysys jobs tests
