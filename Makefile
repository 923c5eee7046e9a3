# Two entry points do all set-up on a fresh machine: `make demo`, `make test`.
# Each creates .venv/ and installs what it needs when missing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.finegrain-installed
PYTHON ?= python3

# Tested versions of every dependency but torch (and its CUDA wheels), from pip-tools'
# pip-compile; `make install` uses it as a constraints file, `make lock` regenerates it.
LOCK      := requirements.lock
LOCKTOOLS ?= $(VENV)/lock-tools
LOCK_ARGS ?=
ifdef UPGRADE
LOCK_ARGS += --upgrade
endif

.PHONY: install lock demo test bench pretrained clean-stack

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# No NVIDIA GPU: pin the CPU build of torch before anything can pull CUDA wheels.
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q -c $(LOCK) "torch==2.13.0"; fi
	$(PY) -m pip install -q -c $(LOCK) -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Regenerate $(LOCK) from pyproject.toml (dependencies + the test extra) for this Python.
# Pins already in $(LOCK) are kept where pyproject still admits them; `make lock UPGRADE=1`
# moves everything to the newest allowed release (then run `make test`). torch is resolved
# as the CPU build the install pins but left out (--unsafe-package), and any nvidia-*/triton
# pins are dropped, so a GPU machine still picks its own torch build.
lock:
	test -x $(LOCKTOOLS)/bin/pip-compile || { $(PYTHON) -m venv $(LOCKTOOLS) && \
	  $(LOCKTOOLS)/bin/pip install -q --upgrade pip "pip-tools==7.7.0"; }
	echo "torch==2.13.0" > $(LOCKTOOLS)/torch-cpu.txt
	CUSTOM_COMPILE_COMMAND="make lock" $(LOCKTOOLS)/bin/pip-compile --quiet --extra test \
	  --strip-extras --unsafe-package torch --constraint $(LOCKTOOLS)/torch-cpu.txt \
	  --no-emit-index-url --no-emit-find-links $(LOCK_ARGS) --output-file $(LOCK) pyproject.toml
	awk '/^(nvidia-|triton[=[])/ {skip = 1; next} skip && /^    #/ {next} {skip = 0; print}' \
	  $(LOCK) > $(LOCK).tmp && mv $(LOCK).tmp $(LOCK)

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
