# Every target creates the virtual environment and installs the project first (once per pyproject change).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint types check bench bench-modes dashboards clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "chatbench needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

## demo: start the embedded server, run the smoke scenario for 30 s, print the summary
demo: $(STAMP)
	$(BIN)/chatbench run smoke --users 300 --duration 30s

## test: unit and integration tests (real server processes, real clients)
test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

types: $(STAMP)
	$(BIN)/mypy

check: lint types test

## bench: deliveries per server-CPU-second, 10,000-member group (see README)
bench: $(STAMP)
	$(BIN)/python -m benchmarks.fanout

## bench-modes: rows written and server CPU per message for each storage/unread/offline mode (docs/modes.md)
bench-modes: $(STAMP)
	$(BIN)/python -m benchmarks.modes

## dashboards: regenerate dashboards/json from dashboards/*.py (commit the result)
dashboards: $(STAMP)
	$(BIN)/python -m dashboards

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
