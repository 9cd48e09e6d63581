# Two commands on a fresh machine: `make run` and `make test`. Each creates .venv
# and installs the pinned dependencies on first use; later calls skip that step.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | sha256sum | cut -c1-12)
# uv installs the locked environments in about 2 minutes where pip took 3-4.6 (of every fresh `make test` on 2 cores).
# Bytecode is compiled at install, as pip does: these machines set PYTHONDONTWRITEBYTECODE, and without it every
# process (Ray workers, TVM's tuning pools, CLI runs) compiled torch and TVM again: the tests took twice as long.
# uv does not read pip's configuration: the wheel folders pip is configured with (the torch CPU wheel) are passed on.
UV_VERSION := 0.13.8
UV_LINKS    = $(foreach d,$(sort $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null) $(PIP_FIND_LINKS)),--find-links $(d))
# The TFLite converter (litert-torch) pins typing-extensions below what TVM's FFI needs: it gets its own
# environment, which the microcontroller pipeline calls in a subprocess (search/stages/tflite_convert.py).
MCU_VENV  := .venv-mcu
MCU_STAMP := $(MCU_VENV)/.installed-$(shell cat requirements-mcu.lock | sha256sum | cut -c1-12)
RUNS   ?= runs

.PHONY: setup system-packages test-setup run test test-all ui bench soak clean help

help:
	@echo "make run       set up, then run a small real search on the built-in digits dataset"
	@echo "make test      set up, then run the test suite (slow tests excluded)"
	@echo "make ui        serve the MLflow UI for runs/ on http://127.0.0.1:5000"
	@echo "make test-all  the whole test suite, slow tests included"
	@echo "make bench     benchmarks (BENCH_ARGS=--quick for a short run), runs/bench/REPORT.md"
	@echo "make soak      100-trial load test, figures in runs/bench/soak.json"
	@echo "make clean     remove .venv, .venv-mcu and the contents of runs/"

$(STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: edgesearch needs Python 3.11 (the torch CPU wheel is cp311)"; exit 1; }
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv==$(UV_VERSION)
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python $(UV_LINKS) -c requirements.lock -e ".[test,mcu]"
	touch $@

$(MCU_STAMP): requirements-mcu.lock
	rm -rf $(MCU_VENV)
	$(PYTHON) -m venv $(MCU_VENV)
	$(MCU_VENV)/bin/pip install --quiet uv==$(UV_VERSION)
	$(MCU_VENV)/bin/uv pip install --quiet --compile-bytecode --python $(MCU_VENV)/bin/python $(UV_LINKS) -r requirements-mcu.lock
	touch $@

# The two environments install side by side (each is mostly unpacking wheels).
setup:
	$(MAKE) --no-print-directory -j2 $(STAMP) $(MCU_STAMP)

# A small real search: 12 candidates on 2 local Ray workers, digits, host CPU, 0.05 ms budget.
run: setup
	$(BIN)/edgesearch --runs-dir $(RUNS) submit --name demo-$(shell date +%Y%m%d-%H%M%S) --dataset digits \
		--target host --latency-budget-ms 0.05 --trials 12 --workers 2 --epochs 10

ui: setup
	$(BIN)/edgesearch --runs-dir $(RUNS) ui

# The tests need two of Debian's packages: a headless Chromium (the MLflow UI test drives a real browser) and
# PostgreSQL (the multi-user storage tests start a real server). One apt call installs whichever is missing (two would
# wait on each other for dpkg's lock).
system-packages:
	@missing=""; command -v chromium >/dev/null || missing=" chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	[ -z "$$missing" ] || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } || \
		echo "warning: could not install Debian's$$missing (needs root and apt): the tests that use it will fail"

# The tests' setup: both environments and the system packages, side by side (about 40 s of apt on a fresh machine).
test-setup:
	$(MAKE) --no-print-directory -j3 $(STAMP) $(MCU_STAMP) system-packages

# PYTHONFAULTHANDLER: a native crash (TVM, Ray, onnxruntime) prints every thread's stack, also once pytest has
# reported, when the interpreter tears the libraries down (one run ended so, in a bare "Segmentation fault")
test: test-setup
	PYTHONFAULTHANDLER=1 $(BIN)/python -m pytest -m "not slow" -q --durations=20

test-all: test-setup
	PYTHONFAULTHANDLER=1 $(BIN)/python -m pytest -q

# Benchmarks (not tests): runs/bench/results.json and REPORT.md. BENCH_ARGS=--quick for a short run.
bench: setup
	$(BIN)/python benchmarks/bench.py --runs-dir $(RUNS) $(BENCH_ARGS)

# Load test: 100 cheapest candidates on 2 workers; writes runs/bench/soak.json (about 10 minutes).
soak: setup
	$(BIN)/python benchmarks/soak.py --runs-dir $(RUNS)

clean:
	rm -rf $(VENV) $(MCU_VENV)
	find $(RUNS) -mindepth 1 ! -name README.md -exec rm -rf {} +
