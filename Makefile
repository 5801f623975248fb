# vdreid: two commands. `make demo` (set up + synthetic demo) and `make test` (the test suite).
# Both create .venv if it is missing and install the package with the extras in EXTRAS (default: cpu,dev).
# GPU machines: `make setup EXTRAS=gpu,dev` (faiss-gpu instead of faiss-cpu; the two ship the same module).
VENV ?= .venv
EXTRAS ?= cpu,dev
PY := $(VENV)/bin/python
# torch/torchvision pair known to install together here; override for CUDA builds, e.g. make TORCH_SPEC="torch torchvision"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: setup demo test lint clean

define INSTALL
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel >/dev/null
	$(PY) -m pip install $(TORCH_SPEC)
	case ",$(EXTRAS)," in \
	  *,gpu,*) $(PY) -m pip uninstall -y faiss-cpu >/dev/null 2>&1 || true ;; \
	  *,cpu,*) $(PY) -m pip uninstall -y faiss-gpu >/dev/null 2>&1 || true ;; \
	esac
	$(PY) -m pip install -e ".[$(EXTRAS)]"
	touch $(VENV)/.installed
endef

$(VENV)/.installed: setup.py
	$(INSTALL)

# always (re)installs with EXTRAS, e.g. to switch a CPU install to faiss-gpu
setup:
	$(INSTALL)

demo: $(VENV)/.installed
	$(PY) -m vdreid demo --config-file configs/quickstart.yaml

test: $(VENV)/.installed
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

lint: $(VENV)/.installed
	$(PY) -m ruff check extensions tests benchmarks examples

clean:
	rm -rf $(VENV) log datasets/synthetic *.egg-info extensions/*.egg-info
