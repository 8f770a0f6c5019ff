# Every target creates the virtual environment and installs the project first (once per pyproject change): the
# demo what the project runs on, the other targets its development tools too (pytest, ruff, mypy, ...).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime
STAMP  := $(VENV)/.installed

.PHONY: demo test test-unit system-deps lint types check bench bench-modes bench-check baseline dashboards clean abuse

# setup.py builds the one compiled part (drivers/_pump.c): a change to it re-installs (the editable install builds it
# in place)
$(RUNTIME): pyproject.toml setup.py drivers/_pump.c
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "chatbench needs Python >= 3.11"'
	@$(PYTHON) -c 'import sys, sysconfig, os, shutil; h = os.path.join(sysconfig.get_paths()["include"], "Python.h"); \
		linux = sys.platform.startswith("linux"); \
		assert not linux or shutil.which(sysconfig.get_config_var("CC").split()[0]) or shutil.which("cc"), \
		"chatbench compiles drivers/_pump.c: install a C compiler (Debian: apt-get install gcc)"; \
		assert not linux or os.path.exists(h), \
		f"chatbench compiles drivers/_pump.c: Python headers missing ({h}; Debian: apt-get install python3-dev)"'
	$(PYTHON) -m venv $(VENV)
	@# editable installs from pyproject.toml need pip >= 21.3: upgrade only an older one (saves seconds when fresh)
	$(BIN)/python -c 'import pip, sys; sys.exit(tuple(map(int, pip.__version__.split(".")[:2])) < (21, 3))' \
		|| $(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	@touch $@

$(STAMP): $(RUNTIME)
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

## demo: many_groups on the embedded server, small groups (8) and medium ones (150) with hybrid's threshold (50)
## between them, write/hybrid/read storage, 4 repeats each (12 runs, ~1.5 min): the table with spreads and which
## differences are significant, one result bundle per run under results/, and report.html
DEMO_SCENARIO := many_groups --members 300 --connect-rate 2000 --small-groups 240 --small-size 8 --medium-groups 6 \
	--medium-size 150 --rate 60 --connect-s 1 --send-s 1.5 --settle-s 0.5 --tail-s 0.5 --quiet-s 0.5
demo: $(RUNTIME)
	$(BIN)/chatbench matrix $(DEMO_SCENARIO) --storage write,hybrid,read --server-arg=--hybrid-threshold=50 \
		--repeat 4 --report report.html --accept-invalid

## bench-check: CI regression gate — a short matrix compared with benchmarks/baseline on deterministic cost counters
BENCH_CI := large_group_burst --members 100 --senders 4 --rate 10 --burst-s 2 --settle-s 1 --tail-s 1 \
	--connect-rate 500 --storage write,read --unread per-message,seq
BENCH_CHECKS := --check storage_writes_per_message:0,unread_writes_per_message:0,bus_messages_per_message:0 \
	--check lost:0,duplicated:0,reordered:0,unread_mismatches:0
bench-check: $(STAMP) system-deps
	rm -rf var/bench-check
	$(BIN)/chatbench matrix $(BENCH_CI) --results-dir var/bench-check --accept-invalid
	$(BIN)/chatbench compare --baseline benchmarks/baseline var/bench-check $(BENCH_CHECKS)

## baseline: re-measure benchmarks/baseline (review the diff and commit it when a cost change is intended)
baseline: $(STAMP)
	rm -rf var/baseline
	$(BIN)/chatbench matrix $(BENCH_CI) --results-dir var/baseline --accept-invalid
	rm -f benchmarks/baseline/*.json && mkdir -p benchmarks/baseline && cp var/baseline/*.json benchmarks/baseline/

## system-deps: the system programs the tests use (redis-server, prometheus, chromium, faketime, nftables, ...):
## installed as root, otherwise named with the command that installs them (scripts/system-deps; .ci/run uses it too)
system-deps:
	@scripts/system-deps

## test: unit and integration tests (real server processes, real clients, real Redis and Prometheus)
test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q

## test-unit: the unit tests only (no sockets, no system programs; seconds)
test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

## abuse: the abuse suite's long part (minutes): 100,000+ generated malformed inputs with a canary group measured
## throughout, and a 1,000,000-member change; figures in var/abuse/summary.json (docs/abuse.md); the fast part is in make test
abuse: $(STAMP)
	$(BIN)/python -m tests.abuse

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
