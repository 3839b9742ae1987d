# Two commands do everything on a fresh machine (set-up included):
#   make run    distil on the embedded default (digits; teacher trained once and cached)
#   make test   the test suite (what CI runs)
#   make test-fast  the tests that train no model (pytest -m 'not slow'), for development
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0

.PHONY: run test test-fast test-extras test-wheel lint setup clean

# Tests run single-threaded: on the 2-core machines they run on it is as fast, and a forked
# worker (the fuzz sample, data-loader workers) never inherits an OpenMP pool's held locks.
test test-fast test-extras test-wheel: export OMP_NUM_THREADS = 1

$(BIN)/kdspec: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/kdspec

setup: $(BIN)/kdspec

run: setup
	$(BIN)/kdspec train specs/hinton.kd

test: setup
	$(BIN)/ruff check kdspec tests scripts
	$(BIN)/lint-imports
	$(BIN)/mypy -p kdspec
	$(BIN)/kdspec check specs/
	$(BIN)/kdspec fmt --check specs/
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

# The optional integrations' tests (they skip in `make test` where the packages are missing).
test-extras: setup
	$(BIN)/pip install -q -e '.[dev,lightning,tensorboard]'
	$(BIN)/python -m pytest tests/integrations tests/editor tests/interop tests/runtime/test_loggers.py

# Build the wheel, install it in a fresh venv outside the source tree, run kdspec from it (~80 s).
test-wheel: setup
	$(BIN)/python scripts/wheel_smoke.py

lint: setup
	$(BIN)/ruff check kdspec tests scripts
	$(BIN)/ruff format --check kdspec tests scripts
	$(BIN)/mypy -p kdspec

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
