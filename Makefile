# vdreid: two commands. `make demo` (set up + synthetic demo) and `make test` (the test suite).
# Both create .venv if it is missing and install the package with its CPU and dev extras.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision pair known to install together here; override for CUDA builds, e.g. make TORCH_SPEC="torch torchvision"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: setup demo test lint clean

$(VENV)/.installed: setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel >/dev/null
	$(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e ".[cpu,dev]"
	touch $@

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m vdreid demo --config-file configs/quickstart.yaml

test: $(VENV)/.installed
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

lint: $(VENV)/.installed
	$(PY) -m ruff check extensions tests benchmarks

clean:
	rm -rf $(VENV) log datasets/synthetic *.egg-info extensions/*.egg-info
