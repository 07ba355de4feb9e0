# keygate: `make run` to serve, `make test` to test, `make bench` to measure. Each sets itself up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: run test bench install install-dev clean bytecode

$(VENV)/.runtime: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -e '.[server]'
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.runtime
	$(PIP) install -e '.[server,dev]'
	touch $@

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

# keygate's modules compiled ahead (only those changed since): the editable install leaves it to the
# first import, and where PYTHONDONTWRITEBYTECODE is set every start would compile them again (about
# 60 ms of each CLI command). A pip-installed keygate gets this from pip.
bytecode: $(VENV)/.runtime
	@$(PY) -m compileall -q src/keygate

run: $(VENV)/.runtime bytecode
	$(VENV)/bin/keygate serve

# `make test` runs in two parts: everything but the timing-bound tests on two pytest-xdist workers (one
# per core), then the tests marked `serial` (they compare latencies or run the benchmark) alone, on a
# quiet machine. Each worker has its own databases. `make test PYTEST_ARGS="tests/api -x"` runs pytest
# once with those arguments instead; PYTEST_WORKERS=0 runs the first part serially.
PYTEST_ARGS ?=
PYTEST_WORKERS ?= 2

test: $(VENV)/.dev bytecode
ifeq ($(strip $(PYTEST_ARGS)),)
	@$(PY) -m pytest -n $(PYTEST_WORKERS) -m "not serial"; parallel=$$?; \
	  $(PY) -m pytest -m serial; alone=$$?; \
	  echo "make test: parallel part exit $$parallel, serial part exit $$alone"; \
	  [ $$parallel -eq 0 ] && [ $$alone -eq 0 ]
else
	$(PY) -m pytest $(PYTEST_ARGS)
endif

# wrk is installed where the system allows it (root with apt-get); otherwise bench/run.py says what to
# install and exits 2. BENCH_ARGS are passed on, e.g. `make bench BENCH_ARGS="--only sqlite --rounds 10"`.
bench: $(VENV)/.dev bytecode
	@command -v wrk >/dev/null 2>&1 || [ -x /usr/bin/wrk ] || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 || \
	  { echo "installing wrk (apt-get install -y wrk)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null 2>&1 || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } || true; }
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis test-artifacts
