# The two set-up commands of the README: `make demo` (main job on the synthetic default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export DS_ACCELERATOR ?= cpu

.PHONY: install demo test lint browser wrk

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# CPU wheel from pip's find-links first, so nothing below pulls a multi-GB CUDA build.
	$(PY) -m pip install "torch==2.13.0"
	$(PY) -m pip install -e ".[dev]"
	# DeepSpeed's CPU comm op, compiled now into TORCH_EXTENSIONS_DIR instead of in the first training run.
	$(PY) -m raysys.train.engines
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/raysys pipeline --config jobs/configs/quickstart.yaml --out runs/quickstart

test: install browser wrk
	$(PY) -m pytest tests --durations=40

# Debian's chromium and its driver, for the report's browser test (tests/report/test_report_browser.py).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)

# Debian's wrk, the HTTP load generator of the serving benchmark (jobs/bench/serving.py) and its tests.
wrk:
	@command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)

lint: install
	$(VENV)/bin/ruff check raysys jobs tests
	$(VENV)/bin/ruff format --check raysys jobs tests
