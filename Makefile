# tickreplay: `make demo` runs a real backtest end to end; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TR     := $(VENV)/bin/tickreplay
STAMP  := $(VENV)/.installed

.PHONY: setup sandbox test test-unit bench demo chaos lint clean

setup: $(STAMP) sandbox

# bubblewrap sandboxes the runner (user code: no network, no key, one writable dir). Installed
# from Debian's packages when missing and we are root; without it runners run unsandboxed.
sandbox:
	@command -v bwrap >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && (apt-get install -y -q bubblewrap >/dev/null 2>&1 || \
	      (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q bubblewrap >/dev/null 2>&1)) \
	  || echo "warning: bubblewrap not installed; runners will run without a sandbox"; }

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

test-unit: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

bench: setup
	$(PY) benchmarks/bench_engine.py
	$(PY) benchmarks/bench_temporal.py

chaos: setup
	$(PY) tests/integration/chaos.py $(or $(ROUNDS),20)

demo: setup
	$(PY) -m tickreplay.demo

lint: setup
	$(VENV)/bin/ruff check src tests examples benchmarks

clean:
	rm -rf demo-data demo-results bench-results .pytest_cache
