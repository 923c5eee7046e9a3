# Two entry points do all set-up on a fresh machine: `make demo`, `make test`.
# Each creates .venv/ and installs what it needs when missing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.finegrain-installed
PYTHON ?= python3

.PHONY: install demo test bench pretrained clean-stack

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# No NVIDIA GPU: pin the CPU build of torch before anything can pull CUDA wheels.
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q "torch==2.13.0"; fi
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/finegrain demo

test: install
	$(VENV)/bin/python -m pytest

# Retrain the shipped models (trainables/zoo) from scratch: simulate, train, evaluate, compare with their cards.
pretrained: install
	$(VENV)/bin/finegrain stack up
	$(VENV)/bin/finegrain zoo build --workdir pretrained-work

bench: install
	$(VENV)/bin/python -m pytest tests/benchmarks -m benchmark -s -p no:randomly

clean-stack: install
	$(VENV)/bin/finegrain stack down
