# Quick start: `make demo` (sets up, runs the main job) and `make test` (sets up, runs the tests).
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
# Omniglot: $BATMANN_OMNIGLOT_SOURCE if set, else ../shared/data/omniglot if present, else download.
export BATMANN_OMNIGLOT_SOURCE ?= $(wildcard $(abspath ../shared/data/omniglot))

.PHONY: setup demo test test-all bench clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml scripts/setup_env.sh
	sh scripts/setup_env.sh
	touch $(STAMP)

demo: setup
	$(VENV)/bin/batmann demo

# tests run in TEST_WORKERS processes (pytest-xdist), the tests of one file in the same one
TEST_WORKERS ?= 2

test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-all: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "slow or not slow"

bench: setup
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
