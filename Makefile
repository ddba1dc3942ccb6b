# tokenset: two commands for users, `make repro` and `make test`; both set up .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Stage commands in dvc.yaml (papermill, python) run from the venv.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup repro test bench data clean-venv strip

setup: $(STAMP)

# (Re)install when pyproject changes. torch/torchvision are pinned exactly (see pyproject.toml).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (tokenset)" >/dev/null
	touch $(STAMP)

# Fetch and prepare the default data set (also done by the `data` stage of dvc repro).
data: setup
	$(PY) -m tokenset.data --params params.yaml

# The whole pipeline on the params.yaml preset (default: small, Fashion-MNIST; runtime.device auto: a GPU if torch sees one).
repro: setup
	$(VENV)/bin/dvc repro

# Unit tests + notebooks (nbval) at smoke parameters.
test: setup
	$(PY) -m pytest -q

bench: setup
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

strip: setup
	$(VENV)/bin/nbstripout notebooks/*.ipynb notebooks/tutorials/*.ipynb

clean-venv:
	rm -rf $(VENV)
